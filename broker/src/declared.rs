//! Streams declared in the config file: started at boot (`always`) or on the
//! first attach (`on-demand`), and brought in line with the file on reload.
//!
//! The file owns the streams it declares and nothing else: a reload adds,
//! removes and restarts only streams whose declaration changed, and never
//! touches streams clients started through the control socket (unless the file
//! now declares the same id).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use framebroker_proto::config::{Mode, StreamDecl};
use framebroker_proto::control::{HwAccel, StartRequest, VariantRequest};

use crate::registry::{Broker, Refusal};
use crate::sync::Lock;

/// The declarations in force, by stream id.
#[derive(Default)]
pub struct Declared {
    streams: Mutex<BTreeMap<String, StreamDecl>>,
}

impl Declared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, StreamDecl>> {
        self.streams.locked()
    }

    /// The declaration of an on-demand stream `id` (or of the stream one of
    /// whose variants is `id`), as a start request.
    pub fn on_demand_request(&self, id: &str) -> Option<StartRequest> {
        self.lock()
            .values()
            .find(|d| {
                d.mode == Mode::OnDemand && (d.id == id || d.variants.iter().any(|v| v.id == id))
            })
            .map(start_request)
    }

    /// Every declaration, in id order.
    pub fn all(&self) -> Vec<StreamDecl> {
        self.lock().values().cloned().collect()
    }
}

/// The start request a declaration makes.
pub fn start_request(d: &StreamDecl) -> StartRequest {
    let mut r = StartRequest::new(d.id.clone(), d.url.clone());
    if let Some((w, h)) = d.size {
        r.width = Some(w);
        r.height = Some(h);
    }
    r.pixel_format = d.pixel_format;
    r.transport = d.transport;
    r.ring_slots = d.ring_slots;
    r.on_demand = d.mode == Mode::OnDemand;
    // The config checked the name against the same list; an unknown one
    // cannot get here, and would mean the broker's default.
    r.hwaccel = d.hwaccel.as_deref().and_then(HwAccel::from_name);
    r.variants = d
        .variants
        .iter()
        .map(|v| VariantRequest::new(v.id.clone(), v.size, v.pixel_format))
        .collect();
    r
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Streams the file declares that could not start, with the reason.
    pub failed: Vec<(String, String)>,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "added: {}; removed: {}; changed: {}; unchanged: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.changed),
            self.unchanged.len()
        )?;
        for (id, why) in &self.failed {
            write!(f, "; {id} did not start: {why}")?;
        }
        Ok(())
    }
}

impl Broker {
    /// Makes the declared streams those of `decls`: stops the ones no longer
    /// declared, restarts the ones whose declaration changed, starts new
    /// `always` ones, and leaves every other stream running untouched.
    pub fn apply_declared(self: &Arc<Self>, decls: Vec<StreamDecl>) -> Applied {
        let mut out = Applied::default();
        let new: BTreeMap<String, StreamDecl> =
            decls.into_iter().map(|d| (d.id.clone(), d)).collect();
        let old = std::mem::replace(&mut *self.declared().lock(), new.clone());
        for (id, d) in &old {
            if !new.contains_key(id) {
                self.stop_declared(d);
                out.removed.push(id.clone());
            }
        }
        for (id, d) in &new {
            match old.get(id) {
                Some(o) if o == d => {
                    // Unchanged; an `always` stream that failed at the last
                    // attempt gets another one.
                    if d.mode == Mode::Always && self.current(id).is_none() {
                        if let Err(e) = self.start(start_request(d)) {
                            out.failed.push((id.clone(), e.message));
                        }
                    }
                    out.unchanged.push(id.clone());
                    continue;
                }
                Some(o) => {
                    self.stop_declared(o);
                    out.changed.push(id.clone());
                }
                None => {
                    // A stream a client started under this id gives way to the file.
                    if self.current(id).is_some() {
                        let _ = self.stop(id);
                    }
                    out.added.push(id.clone());
                }
            }
            if d.mode == Mode::Always {
                if let Err(e) = self.start(start_request(d)) {
                    out.failed.push((id.clone(), e.message));
                }
            }
        }
        out
    }

    fn stop_declared(&self, d: &StreamDecl) {
        if self.current(&d.id).is_some() {
            let _ = self.stop(&d.id);
        }
    }

    /// Starts the on-demand stream that serves `id`, if the file declares one
    /// and it is not running. `Ok(true)` when a start was made.
    pub(crate) fn start_on_demand(self: &Arc<Self>, id: &str) -> Result<bool, Refusal> {
        let Some(req) = self.declared().on_demand_request(id) else {
            return Ok(false);
        };
        if self.current(&req.id).is_some() {
            return Ok(false);
        }
        tracing::info!(stream = %req.id, "first reader: starting on-demand stream");
        self.start(req).map(|_| true)
    }
}
