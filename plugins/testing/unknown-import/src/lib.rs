//! Test plugin: a job that needs `acme:vault-job/secrets`, which zkrun does
//! not grant. Loading it must fail with a clear error naming the import.

wit_bindgen::generate!({ path: "wit", world: "job", generate_all });

use acme::vault_job::secrets::fetch;
use zkrun::plugin::host::log;
use zkrun::plugin::types::Level;

struct UnknownImport;

impl Guest for UnknownImport {
    fn on_elected(_: Leadership) -> Result<(), String> {
        let token = fetch("token").unwrap_or_default();
        log(Level::Info, &format!("token has {} bytes", token.len()));
        Ok(())
    }

    fn tick(_: Leadership) -> Result<(), String> {
        Ok(())
    }

    fn on_demoted(_: DemoteReason) {}
}

export!(UnknownImport);
