//! Organizations end to end: tenancy (another org's ids are 404), roles, invitations,
//! switching the current organization.

mod common;

use common::{Auth, assert_error, spawn_app};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.unwrap()
}

#[tokio::test]
async fn another_orgs_members_and_invitations_are_not_found() {
    let app = spawn_app().await;
    let alice = app.sign_up("alice@a.example").await;
    let bob = app.sign_up("bob@b.example").await;

    let b_members = json_of(app.get("/api/v1/members", &Auth::Session(&bob)).await).await;
    let b_member_id = b_members[0]["id"].as_str().unwrap().to_owned();
    let b_invitation = json_of(app.invite(&bob, "x@b.example", "member").await).await;
    let b_invitation_id = b_invitation["invitation"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Alice (owner of org A) addresses org B's ids: 404 every time, never the object.
    let a = Auth::Session(&alice);
    let cases = [
        app.get(&format!("/api/v1/members/{b_member_id}"), &a).await,
        app.patch(
            &format!("/api/v1/members/{b_member_id}"),
            &a,
            &json!({ "role": "viewer" }),
        )
        .await,
        app.delete(&format!("/api/v1/members/{b_member_id}"), &a)
            .await,
        app.get(&format!("/api/v1/invitations/{b_invitation_id}"), &a)
            .await,
        app.delete(&format!("/api/v1/invitations/{b_invitation_id}"), &a)
            .await,
        app.post(
            &format!("/api/v1/orgs/{}/switch", bob.org_id),
            &a,
            &json!({}),
        )
        .await,
    ];
    for response in cases {
        let body = assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
        assert!(!body.to_string().contains("bob@b.example"), "{body}");
    }
    // Org A's lists do not show org B's rows.
    let a_members = json_of(app.get("/api/v1/members", &a).await).await;
    assert_eq!(a_members.as_array().unwrap().len(), 1);
    assert_eq!(a_members[0]["email"], "alice@a.example");

    // Nothing of B's changed.
    let still = app
        .get(
            &format!("/api/v1/members/{b_member_id}"),
            &Auth::Session(&bob),
        )
        .await;
    assert_eq!(json_of(still).await["role"], "owner");
    let inv = app
        .get(
            &format!("/api/v1/invitations/{b_invitation_id}"),
            &Auth::Session(&bob),
        )
        .await;
    assert!(json_of(inv).await["revoked_at"].is_null());

    // A token naming org B in X-Tailor-Org is not let in either.
    let (_, token) = app.create_token(&alice, "script").await;
    let response = app
        .request(
            reqwest::Method::GET,
            "/api/v1/members",
            &Auth::Bearer(&token),
        )
        .header("X-Tailor-Org", bob.org_id.to_string())
        .send()
        .await
        .unwrap();
    assert_error(response, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn invitation_link_adds_the_member_with_its_role_once() {
    let app = spawn_app().await;
    let owner = app.sign_up("owner@firm.example").await;
    let created = app.invite(&owner, "new@firm.example", "viewer").await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created = json_of(created).await;
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(
        created["url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/invitations/{token}"))
    );

    let newcomer = app.sign_up("new@firm.example").await;
    let page = app
        .get(&format!("/invitations/{token}"), &Auth::Session(&newcomer))
        .await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("owner@firm.example"));

    let accepted = app.accept(&newcomer, &token).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let accepted = json_of(accepted).await;
    assert_eq!(accepted["role"], "viewer");

    // Joined, and the new organization became the current one.
    let me = json_of(app.me(&Auth::Session(&newcomer)).await).await;
    assert_eq!(me["current_org_id"], owner.org_id.to_string());
    assert_eq!(me["role"], "viewer");
    assert_eq!(me["orgs"].as_array().unwrap().len(), 2);
    let members = json_of(app.get("/api/v1/members", &Auth::Session(&owner)).await).await;
    assert_eq!(members.as_array().unwrap().len(), 2);

    // The link works once.
    let third = app.sign_up("third@firm.example").await;
    assert_error(
        app.accept(&third, &token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_error(
        app.accept(&third, "made-up").await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn expired_and_revoked_invitations_cannot_be_accepted() {
    let app = spawn_app().await;
    let owner = app.sign_up("o@x.example").await;
    let guest = app.sign_up("g@x.example").await;
    let expired = json_of(app.invite(&owner, "g@x.example", "member").await).await;
    sqlx::query("UPDATE invitations SET expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(uuid::Uuid::parse_str(expired["invitation"]["id"].as_str().unwrap()).unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    let token = expired["token"].as_str().unwrap();
    assert_error(
        app.accept(&guest, token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;

    let revoked = json_of(app.invite(&owner, "g@x.example", "member").await).await;
    let id = revoked["invitation"]["id"].as_str().unwrap();
    let gone = app
        .delete(&format!("/api/v1/invitations/{id}"), &Auth::Session(&owner))
        .await;
    assert_eq!(gone.status(), StatusCode::NO_CONTENT);
    let token = revoked["token"].as_str().unwrap();
    assert_error(
        app.accept(&guest, token).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn viewers_read_but_cannot_invite_or_change_roles() {
    let app = spawn_app().await;
    let owner = app.sign_up("boss@y.example").await;
    let token = json_of(app.invite(&owner, "v@y.example", "viewer").await).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let viewer = app.sign_up("v@y.example").await;
    app.accept(&viewer, &token).await;

    let v = Auth::Session(&viewer);
    assert_eq!(
        app.get("/api/v1/members", &v).await.status(),
        StatusCode::OK
    );
    assert_error(
        app.invite(&viewer, "z@y.example", "member").await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    assert_error(
        app.get("/api/v1/invitations", &v).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let members = json_of(app.get("/api/v1/members", &v).await).await;
    let owner_member = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["email"] == "boss@y.example")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let demote = app
        .patch(
            &format!("/api/v1/members/{owner_member}"),
            &v,
            &json!({ "role": "viewer" }),
        )
        .await;
    assert_error(demote, StatusCode::FORBIDDEN, "forbidden").await;

    // The owner cannot demote the last owner either.
    let last = app
        .patch(
            &format!("/api/v1/members/{owner_member}"),
            &Auth::Session(&owner),
            &json!({ "role": "admin" }),
        )
        .await;
    let body = assert_error(last, StatusCode::UNPROCESSABLE_ENTITY, "validation").await;
    assert_eq!(body["error"]["field"], "role");
}

#[tokio::test]
async fn switching_the_current_organization() {
    let app = spawn_app().await;
    let user = app.sign_up("multi@z.example").await;
    let created = app
        .post(
            "/api/v1/orgs",
            &Auth::Session(&user),
            &json!({ "name": "Hospital 律所" }),
        )
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let second = json_of(created).await["id"].as_str().unwrap().to_owned();

    let me = json_of(app.me(&Auth::Session(&user)).await).await;
    assert_eq!(me["current_org_id"], user.org_id.to_string());

    let switched = app
        .post(
            &format!("/api/v1/orgs/{second}/switch"),
            &Auth::Session(&user),
            &json!({}),
        )
        .await;
    assert_eq!(switched.status(), StatusCode::OK);
    let me = json_of(app.me(&Auth::Session(&user)).await).await;
    assert_eq!(me["current_org_id"], second);
    assert_eq!(me["orgs"].as_array().unwrap().len(), 2);
    // Members are now those of the second organization.
    let members = json_of(app.get("/api/v1/members", &Auth::Session(&user)).await).await;
    assert_eq!(members[0]["org_id"], second);

    // The dashboard shows the switcher with both organizations.
    let html = app
        .get("/dashboard", &Auth::Session(&user))
        .await
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("Hospital 律所") && html.contains("/orgs/switch"),
        "{html}"
    );
}
