//! Accounts: users, organizations, members and roles, invitations, sessions and personal
//! API tokens. Raw input becomes the types here once, at the HTTP boundary.

pub mod invitations;
pub mod orgs;
pub mod sessions;
pub mod throttle;
pub mod tokens;
pub mod users;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// A member's role in an organization, from most to least powerful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Member,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(field: &str, raw: &str) -> Result<Role, Error> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            "member" => Ok(Role::Member),
            "viewer" => Ok(Role::Viewer),
            _ => Err(Error::validation(
                field,
                "Choose owner, admin, member or viewer.",
            )),
        }
    }

    /// Admins and owners manage members and invitations.
    pub fn can_manage_members(self) -> bool {
        self >= Role::Admin
    }

    /// Members and above create and change the organization's resources.
    pub fn can_write(self) -> bool {
        self >= Role::Member
    }
}

impl TryFrom<String> for Role {
    type Error = Error;
    fn try_from(raw: String) -> Result<Self, Error> {
        Role::parse("role", &raw)
    }
}

/// A trimmed, lower-cased email address with one `@` and a dot in its domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Email, Error> {
        let email = raw.trim().to_lowercase();
        let valid = email.len() <= 254
            && email.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !domain.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains('@')
            })
            && !email.chars().any(char::is_whitespace);
        if valid {
            Ok(Email(email))
        } else {
            Err(Error::validation("email", "Enter a valid email address."))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password of 8 to 1024 characters (argon2 work grows with length; cap it).
#[derive(Debug)]
pub struct Password(SecretString);

impl Password {
    pub fn parse(raw: SecretString) -> Result<Password, Error> {
        let n = raw.expose_secret().chars().count();
        if n < 8 {
            return Err(Error::validation("password", "Use at least 8 characters."));
        }
        if n > 1024 {
            return Err(Error::validation(
                "password",
                "Use at most 1024 characters.",
            ));
        }
        Ok(Password(raw))
    }

    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

/// A non-empty name of at most 100 characters, trimmed.
pub fn parse_name(field: &str, raw: &str) -> Result<String, Error> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(Error::validation(field, "Enter a name."));
    }
    if name.chars().count() > 100 {
        return Err(Error::validation(field, "Use at most 100 characters."));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::validation(field, "Remove control characters."));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            Email::parse(" A@Example.COM ").unwrap().as_str(),
            "a@example.com"
        );
        for bad in ["", "a", "a@", "@b.c", "a@b", "a b@c.d", "a@b.", "a@@b.c"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles_order_and_parse() {
        assert!(Role::Owner.can_manage_members() && Role::Admin.can_manage_members());
        assert!(!Role::Member.can_manage_members() && !Role::Viewer.can_write());
        assert_eq!(Role::parse("role", "Viewer").unwrap(), Role::Viewer);
        assert!(Role::parse("role", "root").is_err());
    }

    #[test]
    fn passwords() {
        assert!(Password::parse(SecretString::from("short")).is_err());
        assert!(Password::parse(SecretString::from("long enough")).is_ok());
    }
}
