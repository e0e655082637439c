//! One round of the hub loop: collect a report, post it, return the hub's envelope.
//!
//! Owns nothing but the pairing of a [`Collector`] with a [`HubClient`]; the schedule
//! is the poller's. A collect failure means nothing is sent this round.

use std::fmt;

use super::client::{HubClient, HubClientError};
use super::collect::{CloudflaredProbe, CollectError, Collector, HostReader};
use super::envelope::ControlEnvelope;
use super::poller::Reporter;
use super::report::HostReport;

/// Why a round produced no envelope.
#[derive(Debug)]
#[non_exhaustive]
pub enum HubRoundError {
    /// No report could be built (node status or guest list unreadable); nothing sent.
    Collect(CollectError),
    /// The report was built but the hub did not accept it: unreachable, an error
    /// status (401 for a key it does not accept), or an answer that is no envelope.
    Report {
        /// The URL the report was posted to.
        endpoint: String,
        /// What went wrong.
        source: HubClientError,
    },
}

impl fmt::Display for HubRoundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HubRoundError::Collect(e) => write!(f, "no report this round: {e}"),
            // A transport error already names the method and URL.
            HubRoundError::Report {
                source: source @ HubClientError::Transport(_),
                ..
            } => source.fmt(f),
            HubRoundError::Report { endpoint, source } => write!(f, "POST {endpoint}: {source}"),
        }
    }
}

impl std::error::Error for HubRoundError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HubRoundError::Collect(e) => Some(e),
            HubRoundError::Report { source, .. } => Some(source),
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
    pub fn send(&self, report: &HostReport) -> Result<ControlEnvelope, HubClientError> {
        self.client.post_report(report)
    }
}

impl<R: HostReader, P: CloudflaredProbe> Reporter for HubRound<R, P> {
    type Error = HubRoundError;

    fn round(&mut self) -> Result<ControlEnvelope, HubRoundError> {
        let report = self.collect().map_err(HubRoundError::Collect)?;
        let envelope = self.send(&report).map_err(|source| HubRoundError::Report {
            endpoint: self.client.endpoint().to_owned(),
            source,
        })?;
        crate::debug!(
            report_accepted,
            "host report accepted",
            guests = report.guests.len(),
            backups = report.backups.len()
        );
        Ok(envelope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::{HttpError, TransportError};

    fn report(source: HubClientError) -> String {
        HubRoundError::Report {
            endpoint: "https://hub.example/api/v1/host-report".into(),
            source,
        }
        .to_string()
    }

    #[test]
    fn a_refused_report_names_the_endpoint_once() {
        let refused = report(HubClientError::Http(HttpError {
            status: 401,
            reason: "Unauthorized".into(),
            body_excerpt: String::new(),
        }));
        assert_eq!(
            refused,
            "POST https://hub.example/api/v1/host-report: hub refused the report: \
             HTTP 401 Unauthorized (the hub does not accept the configured hub.api_key)"
        );
        let unreachable = report(HubClientError::Transport(TransportError::Timeout {
            target: "POST https://hub.example/api/v1/host-report".into(),
            phase: crate::net::TimeoutPhase::Exchange,
        }));
        assert_eq!(
            unreachable.matches("https://hub.example").count(),
            1,
            "{unreachable}"
        );
    }
}
