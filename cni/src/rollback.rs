//! Undo steps for ADD: each step that changes the node registers its undo as
//! soon as it succeeds; `commit` disarms them, dropping runs them newest first.
use std::{future::Future, pin::Pin};

type Undo = Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

#[derive(Default)]
#[must_use = "dropping without commit() leaves the undo steps unrun; call run() or commit()"]
pub struct Rollback {
    steps: Vec<(&'static str, Undo)>,
}

impl Rollback {
    pub fn push(&mut self, step: &'static str, undo: impl Future<Output = anyhow::Result<()>> + 'static) {
        self.steps.push((step, Box::pin(undo)));
    }

    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// Undo everything done so far, newest first; every step runs.
    pub async fn run(mut self) {
        while let Some((step, undo)) = self.steps.pop() {
            if let Err(e) = undo.await {
                eprintln!("sluice-cni: rollback step {step:?} failed: {e:#}");
            }
        }
    }
}
