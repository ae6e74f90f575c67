//! The `--db` argument shared by the operator commands, and the one place that turns it into a
//! [`Durably`] instance (SQLite file, PostgreSQL URL or remote libSQL URL).

use std::path::Path;
use std::time::Duration;

use durably::{
    Durably, LibsqlOptions, LibsqlStore, PostgresOptions, PostgresStore, store::SCHEMA_VERSION,
};

use crate::exit::{CliError, USAGE};

/// The database a command works on.
#[derive(clap::Args, Debug, Clone)]
pub struct DbArgs {
    /// The database: a SQLite file path, a PostgreSQL URL
    /// (`postgres://user:password@host:5432/db` or `postgresql://…`), or a remote libSQL URL
    /// (`libsql://my-db.turso.io` for Turso, `https://…`, `http://…` for sqld).
    #[arg(long, value_name = "PATH|URL")]
    pub db: String,
    /// libSQL only: the auth token (Turso's database token); default: the environment
    /// variable `LIBSQL_AUTH_TOKEN`.
    #[arg(long, value_name = "TOKEN")]
    pub auth_token: Option<String>,
    /// PostgreSQL only: the schema holding the durably tables (default: the server's
    /// `search_path`, usually `public`).
    #[arg(long, value_name = "NAME")]
    pub schema: Option<String>,
}

/// What the command is going to do with the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// `durably migrate`: the SQLite file may be created and the schema may be missing.
    Migrate,
    /// Every other command: the database must exist and hold a current durably schema.
    Operate,
    /// `durably serve`: as `Operate`; its mirror relays what other processes do, so run streams
    /// do not follow runs themselves.
    Serve,
}

impl DbArgs {
    /// `true` for a `postgres://` or `postgresql://` URL.
    pub fn is_postgres(&self) -> bool {
        self.db.starts_with("postgres://") || self.db.starts_with("postgresql://")
    }

    /// `true` for a remote libSQL URL (`libsql://`, `https://`, `http://`).
    pub fn is_libsql(&self) -> bool {
        ["libsql://", "https://", "http://"]
            .iter()
            .any(|scheme| self.db.starts_with(scheme))
    }

    /// The libSQL auth token: `--auth-token`, else `LIBSQL_AUTH_TOKEN`.
    fn libsql_token(&self) -> Option<String> {
        self.auth_token
            .clone()
            .or_else(|| std::env::var("LIBSQL_AUTH_TOKEN").ok())
            .filter(|token| !token.is_empty())
    }

    /// The database for messages (a PostgreSQL password and a libSQL URL's token are masked).
    pub fn display(&self) -> String {
        if self.is_postgres() {
            mask_password(&self.db)
        } else if self.is_libsql() {
            mask_token(&self.db)
        } else {
            self.db.clone()
        }
    }

    /// `--db …` as the user would type it again in a suggested command.
    pub fn flag(&self) -> String {
        let mut flag = format!("--db {}", shell_quote(&self.display()));
        if let Some(schema) = &self.schema {
            flag.push_str(&format!(" --schema {}", shell_quote(schema)));
        }
        flag
    }

    /// Builds the instance (no worker is started) and checks the schema: for
    /// [`Purpose::Operate`] the database must exist and be migrated.
    pub async fn open(&self, purpose: Purpose, preserve_steps: bool) -> Result<Durably, CliError> {
        self.open_metered(purpose, preserve_steps, None).await
    }

    /// [`DbArgs::open`], the instance's metrics recorded for `metrics` when given
    /// (`durably serve --metrics`).
    pub async fn open_metered(
        &self,
        purpose: Purpose,
        preserve_steps: bool,
        metrics: Option<&durably::http::PrometheusMetrics>,
    ) -> Result<Durably, CliError> {
        let shown = self.display();
        let hint = if self.is_postgres() {
            " (check that the server is up and reachable, and the URL's host, port, user, \
             password and database name)"
        } else if self.is_libsql() {
            " (check that the server is up and reachable, the URL, and the auth token: \
             --auth-token or LIBSQL_AUTH_TOKEN)"
        } else {
            ""
        };
        let cannot_open = |error: &durably::Error| match error {
            // The library's message names the server and, for a timeout, what to check.
            durably::Error::Storage {
                operation: "connect",
                source,
            } => {
                let text = source.to_string();
                let hint = if text.contains("(check") { "" } else { hint };
                CliError::new(format!("{text}{hint}"))
            }
            // Says which database and what is wrong with it (a missing directory, a scheme).
            durably::Error::Config(message) if message.starts_with("Cannot open") => {
                CliError::new(format!("c{}", &message[1..]))
            }
            _ => CliError::new(format!(
                "cannot open database {shown}: {}{hint}",
                describe(error)
            )),
        };
        let builder = Durably::builder()
            .preserve_steps(preserve_steps)
            .follow_runs_elsewhere(purpose != Purpose::Serve);
        let builder = match metrics {
            Some(metrics) => builder.meter_provider(metrics.meter_provider()),
            None => builder,
        };
        let builder = if self.is_postgres() {
            let options = PostgresOptions::default()
                .max_connections(4)
                .schema(self.schema.clone())
                .connect_timeout(Duration::from_secs(5))
                .wait_timeout(Duration::from_secs(10))
                .retry_for(Duration::from_secs(2));
            let store = PostgresStore::connect_with(&self.db, options)
                .map_err(|e| cannot_open(&e).with_code(USAGE))?;
            builder.store(store)
        } else if self.is_libsql() {
            if self.schema.is_some() {
                return Err(CliError::usage(
                    "--schema applies to PostgreSQL only; a libSQL database holds one durably \
                     schema",
                ));
            }
            let mut options = LibsqlOptions::default()
                .preserve_steps(preserve_steps)
                .timeout(Duration::from_secs(10));
            options.auth_token = self.libsql_token();
            let store = LibsqlStore::open(&self.db, options)
                .map_err(|e| cannot_open(&e).with_code(USAGE))?;
            builder.store(store)
        } else {
            if let Some((scheme, _)) = self.db.split_once("://") {
                return Err(CliError::usage(format!(
                    "--db {shown}: durably does not support `{scheme}://` databases; give a \
                     SQLite file path (app.db), a postgres:// URL or a libsql:// URL"
                )));
            }
            if self.auth_token.is_some() {
                return Err(CliError::usage(
                    "--auth-token applies to a remote libSQL database (libsql://, https://, \
                     http://) only",
                ));
            }
            if self.schema.is_some() {
                return Err(CliError::usage(
                    "--schema applies to PostgreSQL only; a SQLite file holds one durably schema",
                ));
            }
            if self.db.is_empty() {
                return Err(CliError::usage(
                    "--db is empty: give a SQLite file path, a postgres:// URL or a libsql:// URL",
                ));
            }
            let path = Path::new(&self.db);
            if purpose != Purpose::Migrate
                && !path.is_file()
                && let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && !dir.is_dir()
            {
                return Err(CliError::new(format!(
                    "cannot open database {shown}: the directory {} does not exist (check the \
                     path)",
                    dir.display()
                )));
            }
            if purpose != Purpose::Migrate && !path.is_file() {
                return Err(CliError::new(format!(
                    "cannot open database {shown}: no such file (check the path, or create the \
                     schema with `durably migrate --db {}`)",
                    shell_quote(&shown)
                )));
            }
            builder.sqlite(&self.db)
        };
        let durably = builder.build().map_err(|e| cannot_open(&e))?;
        if purpose == Purpose::Migrate {
            return Ok(durably);
        }
        let version = durably
            .store()
            .schema_version()
            .await
            .map_err(|e| cannot_open(&e))?;
        if version == 0 {
            return Err(CliError::new(format!(
                "database {shown} has no durably schema (create it with `durably migrate {}`, \
                 or check that --db names your application's database)",
                self.flag()
            )));
        }
        if version > SCHEMA_VERSION {
            return Err(CliError::new(format!(
                "database {shown} has durably schema version {version}, newer than this command \
                 supports ({SCHEMA_VERSION}): upgrade the durably command"
            )));
        }
        if version < SCHEMA_VERSION {
            return Err(CliError::new(format!(
                "database {shown} has durably schema version {version}; this command needs \
                 {SCHEMA_VERSION} (upgrade it with `durably migrate {}`)",
                self.flag()
            )));
        }
        // A database at upstream's current version that another runtime migrated (the
        // TypeScript one) lacks durably's own additions (indexes, a nullable column), which
        // reading runs needs: add them, as `durably migrate` would (never a change upstream's
        // runtime sees).
        durably.migrate().await.map_err(|e| cannot_open(&e))?;
        Ok(durably)
    }
}

/// The error's message followed by those of its causes that it does not already include
/// (a failed PostgreSQL connection says why only in its causes).
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// `libsql://db?authToken=secret` → `libsql://db?authToken=***`.
fn mask_token(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("authToken") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// Quotes `text` for a POSIX shell when it holds anything but plain path characters.
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::{mask_password, mask_token, shell_quote};

    #[test]
    fn libsql_tokens_are_masked() {
        assert_eq!(
            mask_token("libsql://db.turso.io?authToken=secret&tls=1"),
            "libsql://db.turso.io?authToken=***&tls=1"
        );
        assert_eq!(mask_token("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(
            mask_password("postgres://me:secret@db:5432/app"),
            "postgres://me:***@db:5432/app"
        );
        assert_eq!(
            mask_password("postgresql://me@db/app?sslmode=require"),
            "postgresql://me@db/app?sslmode=require"
        );
        assert_eq!(mask_password("postgres://db/app"), "postgres://db/app");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("app.db"), "app.db");
        assert_eq!(shell_quote("my app.db"), "'my app.db'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
