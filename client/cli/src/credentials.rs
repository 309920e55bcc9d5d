//! What the tools need to get in: a user's password, from
//! `SEMIKV_PASSWORD` or a file, never a command-line flag (which any user
//! of the machine sees in `ps`); and the CA that verifies a balancer
//! serving TLS.

use std::path::Path;

use semikv_client::Credentials;

/// The environment variable a password may come from.
pub const PASSWORD_ENV: &str = "SEMIKV_PASSWORD";

/// Why no credentials could be made.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A password source was given without a user.
    #[error("a password was given (--password-file or {PASSWORD_ENV}) but no --user")]
    NoUser,
    /// A user was given without a password.
    #[error("--user {0} needs a password: set {PASSWORD_ENV} or pass --password-file FILE")]
    NoPassword(String),
    /// The password file could not be read.
    #[error("reading the password file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A password from `file` (its first line) or, without one, from
/// [`PASSWORD_ENV`] (`env` is how the variable is read, for tests).
///
/// # Errors
/// [`CredentialsError::File`] when the file cannot be read.
pub fn password(
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<String>, CredentialsError> {
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::File {
                path: path.display().to_string(),
                source,
            })?;
            Ok(Some(text.lines().next().unwrap_or_default().to_string()))
        }
        None => Ok(env(PASSWORD_ENV)),
    }
}

/// The credentials `--user` and the password sources describe: none when
/// neither is given.
///
/// # Errors
/// [`CredentialsError`] when one comes without the other, or the file
/// cannot be read.
pub fn credentials(
    user: Option<&str>,
    file: Option<&Path>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Credentials>, CredentialsError> {
    let password = password(file, env)?;
    match (user, password) {
        (None, None) => Ok(None),
        // A password in the environment alone is not a mistake: it may be
        // there for another tool; a file given on this command line is.
        (None, Some(_)) if file.is_none() => Ok(None),
        (None, Some(_)) => Err(CredentialsError::NoUser),
        (Some(user), None) => Err(CredentialsError::NoPassword(user.to_string())),
        (Some(user), Some(password)) => Ok(Some(Credentials {
            user: user.to_string(),
            password,
        })),
    }
}

/// TLS to the balancer, verified with the CA in `ca` (`--tls-ca`); `None`
/// without one.
///
/// # Errors
/// The CA file cannot be used.
pub fn tls(
    ca: Option<&Path>,
) -> Result<
    Option<std::sync::Arc<semikv_protocol::tls::TlsClientConfig>>,
    semikv_protocol::tls::TlsError,
> {
    ca.map(|ca| semikv_protocol::tls::client_config(ca, None).map(std::sync::Arc::new))
        .transpose()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_user_needs_a_password_from_the_environment_or_a_file() {
        let none = |_: &str| None;
        let env = |_: &str| Some("from-env".to_string());
        assert!(credentials(None, None, none).unwrap().is_none());
        assert!(credentials(None, None, env).unwrap().is_none());
        assert!(matches!(
            credentials(Some("alice"), None, none),
            Err(CredentialsError::NoPassword(_))
        ));
        let c = credentials(Some("alice"), None, env).unwrap().unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.as_str()),
            ("alice", "from-env")
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "from-file\nignored\n").unwrap();
        let c = credentials(Some("alice"), Some(&file), env)
            .unwrap()
            .unwrap();
        assert_eq!(
            c.password, "from-file",
            "the file wins over the environment"
        );
        assert!(matches!(
            credentials(None, Some(&file), none),
            Err(CredentialsError::NoUser)
        ));
        assert!(format!("{c:?}").contains("alice") && !format!("{c:?}").contains("from-file"));
    }
}
