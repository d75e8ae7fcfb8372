//! The portal: HTML pages (tera) and the JSON API under `/api/v1`.

pub mod assembly;
pub mod auth;
pub mod i18n;
pub mod routes;
pub mod security;
pub mod startup;
pub mod state;

pub use startup::Application;
