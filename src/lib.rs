//! hfgate: an identity-aware reverse proxy for Hugging Face model endpoints.
//!
//! Every request is checked at the door (OpenID Connect bearer JWTs, verified against the issuer's
//! JWKS), forwarded with the organisation's Hugging Face credential instead of the caller's, streamed
//! back untouched, and recorded in an audit line that names the verified caller.
//!
//! Stages, one module each: [`route`] → [`authn`] → [`proxy`] (rewrite, forward, observe) → [`audit`].
#![forbid(unsafe_code)]

pub mod assertion;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod cache;
pub mod ci_token;
pub mod classify;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod device;
pub mod error;
pub mod exchange;
pub mod explain;
pub mod jose;
pub mod login;
pub mod metrics;
pub mod oauth;
pub mod proxy;
pub mod route;
pub mod server;
