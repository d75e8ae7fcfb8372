//! Who is calling, and for which organization.
//!
//! - [`CurrentUser`]: a signed-in browser (session JWT cookie whose `sessions` row is live)
//!   or a script (`Authorization: Bearer tlrp_…` personal API token).
//! - [`CurrentMember`]: a `CurrentUser` plus a checked membership of the current
//!   organization. Org-scoped handlers take this and pass `member.org_id` to queries
//!   (see `tailor_core::tenancy`).
//! - [`CsrfForm`]: the body of an HTML form, with its hidden `csrf_token` checked.
//!
//! CSRF: cookie-authenticated requests that change state (any method but GET, HEAD,
//! OPTIONS) must echo the session's CSRF token, in `X-CSRF-Token` (JSON) or in the form's
//! `csrf_token` field (`CsrfForm`); bearer-token calls are exempt, since browsers never
//! attach them on their own. The check fails closed: `CurrentUser` refuses an unsafe
//! cookie request without the header, so a form handler that forgot `CsrfForm` breaks.

use std::{future::Future, pin::Pin};

use actix_web::{
    FromRequest, HttpMessage, HttpRequest,
    cookie::{Cookie, SameSite, time::Duration as CookieDuration},
    dev::Payload,
    http::{Method, header},
    web,
};
use serde::de::DeserializeOwned;
use tailor_core::{
    Error, OrgId,
    accounts::{Role, orgs, sessions, tokens, users},
    auth::secrets_match,
};
use uuid::Uuid;

use crate::{routes::PageError, state::AppState};

pub const SESSION_COOKIE: &str = "__Host-tailor_session";
/// Double-submit cookie guarding the sign-in and sign-up forms (no session yet).
pub const PRE_SESSION_CSRF_COOKIE: &str = "__Host-tailor_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Chooses the organization of a bearer-token call; default: the user's oldest membership.
pub const ORG_HEADER: &str = "x-tailor-org";

#[derive(Debug, Clone)]
pub enum Credential {
    Session(sessions::Session),
    ApiToken,
}

#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub user_id: Uuid,
    pub credential: Credential,
}

impl CurrentUser {
    pub fn session(&self) -> Option<&sessions::Session> {
        match &self.credential {
            Credential::Session(s) => Some(s),
            Credential::ApiToken => None,
        }
    }

    pub fn csrf_token(&self) -> Option<&str> {
        self.session().map(|s| s.csrf_token.as_str())
    }
}

fn state(req: &HttpRequest) -> web::Data<AppState> {
    req.app_data::<web::Data<AppState>>()
        .expect("AppState is registered")
        .clone()
}

fn changes_state(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Authenticates the request. `form_csrf` is the token from a form body, when there is one.
#[tracing::instrument(skip_all, fields(user_id))]
async fn authenticate(req: &HttpRequest, form_csrf: Option<&str>) -> Result<CurrentUser, Error> {
    let state = state(req);
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Error::Unauthorized)?;
        let user_id = tokens::authenticate(&state.pool, token.trim())
            .await?
            .ok_or(Error::Unauthorized)?;
        tracing::Span::current().record("user_id", tracing::field::display(user_id));
        return Ok(CurrentUser {
            user_id,
            credential: Credential::ApiToken,
        });
    }
    let cookie = req.cookie(SESSION_COOKIE).ok_or(Error::Unauthorized)?;
    let claims = state
        .jwt
        .verify(cookie.value())
        .ok_or(Error::Unauthorized)?;
    let session = sessions::find_live(&state.pool, claims.sid, claims.sub)
        .await?
        .ok_or(Error::Unauthorized)?;
    if changes_state(req.method()) {
        let sent =
            form_csrf.or_else(|| req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()));
        if !sent.is_some_and(|t| secrets_match(t, &session.csrf_token)) {
            return Err(Error::forbidden(
                "Missing or wrong CSRF token; reload the page and try again.",
            ));
        }
    }
    tracing::Span::current().record("user_id", tracing::field::display(session.user_id));
    Ok(CurrentUser {
        user_id: session.user_id,
        credential: Credential::Session(session),
    })
}

/// JSON errors under `/api/`, page errors (sign-in redirect, HTML) elsewhere.
fn reject(req: &HttpRequest, e: Error) -> actix_web::Error {
    if req.path().starts_with("/api/") {
        e.into()
    } else {
        PageError(e).into()
    }
}

impl FromRequest for CurrentUser {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, actix_web::Error>>>>;
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            if let Some(user) = req.extensions().get::<CurrentUser>() {
                return Ok(user.clone());
            }
            let user = authenticate(&req, None)
                .await
                .map_err(|e| reject(&req, e))?;
            req.extensions_mut().insert(user.clone());
            Ok(user)
        })
    }
}

/// A caller acting within an organization they belong to.
#[derive(Debug, Clone)]
pub struct CurrentMember {
    pub user_id: Uuid,
    pub org_id: OrgId,
    pub role: Role,
    /// Id of the `org_members` row.
    pub member_id: Uuid,
    pub user: CurrentUser,
}

impl CurrentMember {
    /// `Forbidden` unless the role allows managing members and invitations.
    pub fn require_admin(&self) -> Result<(), Error> {
        if self.role.can_manage_members() {
            Ok(())
        } else {
            Err(Error::forbidden("Only admins and owners can do this."))
        }
    }

    /// `Forbidden` for viewers.
    pub fn require_writer(&self) -> Result<(), Error> {
        if self.role.can_write() {
            Ok(())
        } else {
            Err(Error::forbidden("Viewers cannot change anything."))
        }
    }

    /// Resolves the organization the user is working in: the session's current one (or,
    /// for a token, the `X-Tailor-Org` header), falling back to their oldest membership.
    pub async fn resolve(
        state: &AppState,
        req: &HttpRequest,
        user: CurrentUser,
    ) -> Result<CurrentMember, Error> {
        let requested = match &user.credential {
            Credential::Session(s) => s.current_org_id,
            Credential::ApiToken => match req.headers().get(ORG_HEADER) {
                Some(v) => Some(OrgId(
                    v.to_str()
                        .ok()
                        .and_then(|s| Uuid::parse_str(s.trim()).ok())
                        .ok_or(Error::NotFound)?,
                )),
                None => None,
            },
        };
        let explicit = matches!(user.credential, Credential::ApiToken) && requested.is_some();
        let mut member = match requested {
            Some(org) => orgs::membership(&state.pool, org, user.user_id).await?,
            None => None,
        };
        if member.is_none()
            && !explicit
            && let Some(org) = users::default_org(&state.pool, user.user_id).await?
        {
            member = orgs::membership(&state.pool, org, user.user_id).await?;
        }
        let member = member.ok_or(Error::NotFound)?;
        Ok(CurrentMember {
            user_id: user.user_id,
            org_id: member.org_id,
            role: member.role,
            member_id: member.id,
            user,
        })
    }
}

impl FromRequest for CurrentMember {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, actix_web::Error>>>>;
    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let user = CurrentUser::from_request(&req, payload);
        Box::pin(async move {
            let user = user.await?;
            let state = state(&req);
            let member = CurrentMember::resolve(&state, &req, user)
                .await
                .map_err(|e| reject(&req, e))?;
            tracing::Span::current().record("org_id", tracing::field::display(member.org_id));
            Ok(member)
        })
    }
}

/// An HTML form body `T` whose `csrf_token` field matched the session's token.
pub struct CsrfForm<T> {
    pub user: CurrentUser,
    pub form: T,
}

#[derive(serde::Deserialize)]
struct WithCsrf<T> {
    #[serde(default)]
    csrf_token: String,
    #[serde(flatten)]
    form: T,
}

impl<T: DeserializeOwned + 'static> FromRequest for CsrfForm<T> {
    type Error = actix_web::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self, actix_web::Error>>>>;
    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let req = req.clone();
        let body = web::Form::<WithCsrf<T>>::from_request(&req, payload);
        Box::pin(async move {
            let body = body
                .await
                .map_err(|_| {
                    reject(
                        &req,
                        Error::validation("form", "The form could not be read."),
                    )
                })?
                .into_inner();
            let user = authenticate(&req, Some(&body.csrf_token))
                .await
                .map_err(|e| reject(&req, e))?;
            req.extensions_mut().insert(user.clone());
            Ok(CsrfForm {
                user,
                form: body.form,
            })
        })
    }
}

/// The `__Host-` session cookie: HttpOnly, Secure, SameSite=Lax, Path=/, no Domain.
pub fn session_cookie(jwt: String, ttl_minutes: i64) -> Cookie<'static> {
    Cookie::build(SESSION_COOKIE, jwt)
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Lax)
        .path("/")
        .max_age(CookieDuration::minutes(ttl_minutes))
        .finish()
}

pub fn expired_session_cookie() -> Cookie<'static> {
    let mut cookie = session_cookie(String::new(), 0);
    cookie.make_removal();
    cookie
}

pub fn pre_session_csrf_cookie(token: String) -> Cookie<'static> {
    Cookie::build(PRE_SESSION_CSRF_COOKIE, token)
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict)
        .path("/")
        .finish()
}
