//! The one place that builds TLS configurations and HTTP agents.
