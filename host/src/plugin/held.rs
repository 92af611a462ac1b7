//! What the host holds on a guest's behalf through `wasi:http`: `fields`,
//! outgoing requests and their body buffers, and resource-table entries.
//! All of it counts against the instance's one memory budget
//! (`--memory-limit`), with the guest's own memories and tables.
//!
//! - The resource table holds at most [`MAX_RESOURCES`] entries.
//! - Every host call that makes the host allocate on the guest's behalf
//!   (`fields` constructor, `from-list` and `clone`, `outgoing-request.body`)
//!   first adds up, from the table, what the host already holds for this
//!   instance, each entry at its most ([`held`]), and traps with
//!   `Stop::HostMemory` if that plus the new allocation would pass the
//!   budget. Counting from the table means a dropped resource is credited
//!   back without any bookkeeping of our own.
//! - A body buffers at most [`BODY_BUFFER`] bytes (wasmtime queues one
//!   chunk more than `p2_outgoing_body_buffer_chunks`, which is 1).
//! - Without an HTTP grant a body is made and charged the same way: its
//!   request is refused when sent (`http_refused`, naming `--allow-http`).
//!   Refusing the body itself would hold less, but HTTP clients in guests
//!   (`wstd`, componentize-js's `fetch`) unwrap it: a missing grant would
//!   trap every tick instead of failing the request the guest can see.
//!   A job serves no HTTP, so `outgoing-response.body` is always refused.
//!
//! The functions are wrapped by shadowing wasmtime-wasi-http's own in the
//! linker, then calling them: their behaviour is otherwise unchanged.

use wasmtime::StoreContextMut;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi_http::p2::bindings::http::types as wit;
use wasmtime_wasi_http::p2::body::HostOutgoingBody;
use wasmtime_wasi_http::p2::types::{HostOutgoingRequest, HostOutgoingResponse};
use wasmtime_wasi_http::{FieldMap, WasiHttpCtxView, WasiHttpView};

use super::StoreState;

/// Most resources (streams, pollables, `fields`, requests, ...) one
/// instance may hold at once. Real components hold a few dozen.
pub const MAX_RESOURCES: usize = 4096;
/// Largest `fields` (headers or trailers) the host keeps for the guest, in
/// bytes of wasmtime's in-memory measure; proxies cap headers at 8 KiB.
pub const FIELDS_LIMIT: usize = 64 << 10;
/// Largest single write into an outgoing body's stream.
pub const BODY_CHUNK: usize = 64 << 10;
/// Most bytes one unsent outgoing body buffers in the host: two chunks.
pub const BODY_BUFFER: usize = 2 * BODY_CHUNK;
/// What one resource-table entry is counted at, whatever it holds: the
/// entry and its boxed value.
const ENTRY_BYTES: usize = 256;
/// The `wasi:http/types` instance as wasmtime-wasi-http defines it in the
/// linker (guests importing any 0.2.x resolve to it).
const TYPES: &str = "wasi:http/types@0.2.12";

/// What the host holds for the guest right now, by what the table holds,
/// each entry at the most it can hold.
pub fn held(table: &mut ResourceTable) -> usize {
    table
        .iter_mut()
        .map(|entry| {
            let most = if entry.is::<FieldMap>() {
                FIELDS_LIMIT
            } else if let Some(request) = entry.downcast_ref::<HostOutgoingRequest>() {
                FIELDS_LIMIT + if request.body.is_some() { BODY_BUFFER } else { 0 }
            } else if let Some(response) = entry.downcast_ref::<HostOutgoingResponse>() {
                FIELDS_LIMIT + if response.body.is_some() { BODY_BUFFER } else { 0 }
            } else {
                0
            };
            ENTRY_BYTES + most
        })
        .sum()
}

impl StoreState {
    /// Admits a host allocation of `bytes` for the guest, or traps.
    fn reserve(&mut self, bytes: usize) -> wasmtime::Result<()> {
        let held = held(&mut self.table);
        self.memory.hold(held, bytes).map_err(wasmtime::Error::new)
    }
}

fn view<'a>(store: &'a mut StoreContextMut<'_, StoreState>) -> WasiHttpCtxView<'a> {
    store.data_mut().http()
}

/// Replaces the allocating `wasi:http/types` functions in `linker` (which
/// already has wasmtime-wasi-http's) with ones that reserve first.
pub fn guard(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES)?;
    types.func_wrap("[constructor]fields", |mut store: StoreContextMut<'_, StoreState>, (): ()| {
        store.data_mut().reserve(FIELDS_LIMIT)?;
        Ok((wit::HostFields::new(&mut view(&mut store))?,))
    })?;
    types.func_wrap(
        "[static]fields.from-list",
        |mut store: StoreContextMut<'_, StoreState>, (entries,): (Vec<(String, Vec<u8>)>,)| {
            store.data_mut().reserve(FIELDS_LIMIT)?;
            let mut view = view(&mut store);
            let result: Result<Resource<FieldMap>, wit::HeaderError> =
                match wit::HostFields::from_list(&mut view, entries) {
                    Ok(fields) => Ok(fields),
                    Err(error) => Err(wit::Host::convert_header_error(&mut view, error)?),
                };
            Ok((result,))
        },
    )?;
    types.func_wrap(
        "[method]fields.clone",
        |mut store: StoreContextMut<'_, StoreState>, (fields,): (Resource<FieldMap>,)| {
            store.data_mut().reserve(FIELDS_LIMIT)?;
            Ok((wit::HostFields::clone(&mut view(&mut store), fields)?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.body",
        |mut store: StoreContextMut<'_, StoreState>, (request,): (Resource<HostOutgoingRequest>,)| {
            store.data_mut().reserve(BODY_BUFFER)?;
            Ok((wit::HostOutgoingRequest::body(&mut view(&mut store), request)?,))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-response.body",
        |_store: StoreContextMut<'_, StoreState>, (_response,): (Resource<HostOutgoingResponse>,)| {
            let refused: Result<Resource<HostOutgoingBody>, ()> = Err(());
            Ok((refused,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_counts_every_entry_at_its_most() {
        let mut table = ResourceTable::new();
        assert_eq!(held(&mut table), 0);
        let fields = table.push(FieldMap::new_mutable(FIELDS_LIMIT)).unwrap();
        table.push(7u32).unwrap();
        assert_eq!(held(&mut table), 2 * ENTRY_BYTES + FIELDS_LIMIT);
        // A dropped resource is credited back.
        table.delete(fields).unwrap();
        assert_eq!(held(&mut table), ENTRY_BYTES);
    }
}
