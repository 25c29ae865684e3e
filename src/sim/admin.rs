//! The unauthenticated `/_sim/...` admin surface: state, faults, seeding and vanishing servers.

use super::*;
use serde::Deserialize;

pub(super) fn state_json(s: &SimState) -> Value {
    json!({
        "servers": s.servers,
        "commands": s.commands.values().collect::<Vec<_>>(),
        "requests": s.requests,
        "queue_polls": s.queue_polls,
        "faults": s.faults,
        "quota": s.quota,
        "timing": s.timing,
    })
}

pub(super) async fn admin_state(State(sim): Sim) -> Response {
    let mut s = sim.lock();
    s.advance(Instant::now());
    json_response(StatusCode::OK, state_json(&s))
}

pub(super) async fn admin_get_faults(State(sim): Sim) -> Response {
    let s = sim.lock();
    json_response(StatusCode::OK, json!(s.faults))
}

pub(super) async fn admin_put_faults(State(sim): Sim, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            sim.lock().faults = f.clone();
            json_response(StatusCode::OK, json!(f))
        }
        Err(e) => json_response(
            StatusCode::BAD_REQUEST,
            json!({ "message": format!("invalid faults: {e}") }),
        ),
    }
}

#[derive(Deserialize)]
pub(super) struct SeedRequest {
    name: String,
    #[serde(default = "default_dc")]
    datacenter: String,
    #[serde(default = "default_true")]
    power_on: bool,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default = "default_cpu")]
    cpu: String,
    #[serde(default = "default_ram")]
    ram_mb: u64,
}

pub(super) fn default_dc() -> String {
    "US-NY2".into()
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_cpu() -> String {
    "2B".into()
}
pub(super) fn default_ram() -> u64 {
    4096
}

pub(super) async fn admin_seed(State(sim): Sim, body: Bytes) -> Response {
    match serde_json::from_slice::<SeedRequest>(&body) {
        Ok(r) => {
            let id = sim.lock().seed_server(SeedServer {
                name: r.name,
                datacenter: r.datacenter,
                power_on: r.power_on,
                tags: r.tags,
                cpu: r.cpu,
                ram_mb: r.ram_mb,
            });
            json_response(StatusCode::OK, json!({ "id": id }))
        }
        Err(e) => json_response(
            StatusCode::BAD_REQUEST,
            json!({ "message": format!("invalid server: {e}") }),
        ),
    }
}

pub(super) async fn admin_vanish(State(sim): Sim, Path(id): Path<String>) -> Response {
    if sim.lock().vanish(&id) {
        json_response(StatusCode::OK, json!({ "vanished": id }))
    } else {
        json_response(
            StatusCode::NOT_FOUND,
            json!({ "message": format!("no server with id {id}") }),
        )
    }
}
