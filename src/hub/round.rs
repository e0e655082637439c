//! One round of the hub loop: collect a report, post it, return the hub's envelope.
//!
//! Owns nothing but the pairing of a [`Collector`] with a [`HubClient`]; the schedule
//! is the poller's. A collect failure means nothing is sent this round.

use std::fmt;

use super::client::{ClientError, HubClient};
use super::collect::{CloudflaredProbe, CollectError, Collector, HostReader};
use super::envelope::ControlEnvelope;
use super::poller::Reporter;
use super::report::HostReport;

/// Why a round produced no envelope.
#[derive(Debug)]
#[non_exhaustive]
pub enum RoundError {
    /// No report could be built (node status or guest list unreadable); nothing sent.
    Collect(CollectError),
    /// The report was built but the hub did not accept it.
    Report(ClientError),
}

impl fmt::Display for RoundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RoundError::Collect(e) => write!(f, "no report this round: {e}"),
            RoundError::Report(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RoundError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RoundError::Collect(e) => Some(e),
            RoundError::Report(e) => Some(e),
        }
    }
}

/// A collector and a client: what the poller runs each round.
#[derive(Debug)]
pub struct HubRound<R, P> {
    collector: Collector<R, P>,
    client: HubClient,
}

impl<R: HostReader, P: CloudflaredProbe> HubRound<R, P> {
    /// Pairs a collector with a client.
    pub fn new(collector: Collector<R, P>, client: HubClient) -> Self {
        HubRound { collector, client }
    }

    /// The collector.
    pub fn collector(&self) -> &Collector<R, P> {
        &self.collector
    }

    /// The client.
    pub fn client(&self) -> &HubClient {
        &self.client
    }

    /// Builds this round's report.
    pub fn collect(&self) -> Result<HostReport, CollectError> {
        self.collector.collect()
    }

    /// Posts a report.
    pub fn send(&self, report: &HostReport) -> Result<ControlEnvelope, ClientError> {
        self.client.post_report(report)
    }
}

impl<R: HostReader, P: CloudflaredProbe> Reporter for HubRound<R, P> {
    type Error = RoundError;

    fn round(&mut self) -> Result<ControlEnvelope, RoundError> {
        let report = self.collect().map_err(RoundError::Collect)?;
        let envelope = self.send(&report).map_err(RoundError::Report)?;
        crate::debug!(
            "host report accepted",
            guests = report.guests.len(),
            backups = report.backups.len()
        );
        Ok(envelope)
    }
}
