//! The `zkrun` binary. Everything happens in the library; see `cli`.

fn main() -> std::process::ExitCode {
    zkrun::cli::main()
}
