//! What every handler shares, built once at start-up.

use std::sync::Arc;

use sqlx::PgPool;
use tailor_core::{Settings, auth::JwtKeys, storage::Store};

use crate::i18n::Templates;

pub struct AppState {
    pub settings: Arc<Settings>,
    pub pool: PgPool,
    pub store: Store,
    pub jwt: JwtKeys,
    pub templates: Templates,
}
