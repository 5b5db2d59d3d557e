//! Validation of the security parts of a config: identities, tenant sources, TLS.
//!
//! Error messages name files and keys, never a secret: a token or hash that fails a check is
//! described, not printed.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_saphyr::Spanned;

use super::raw::{RawIdentity, RawServerTls, RawTenant, RawUpstreamTls};
use super::validate::Errors;
use crate::auth::{
    CertName, Credential, Identities, Identity, check_bcrypt_hash, htpasswd_hash, token_digest,
};
use crate::tenant::{InvalidTenant, TenantId, TenantSource};
use crate::tls::{ClientAuth, ServerTls, UpstreamTls};

/// Shortest bearer token accepted: shorter ones can be guessed.
const MIN_TOKEN_LEN: usize = 16;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Builds the identities, reading token files, environment variables and htpasswd files.
/// Names every identity in the file (valid or not), for route references.
pub(super) fn identity_names(raw: &[Spanned<RawIdentity>]) -> Vec<String> {
    raw.iter().map(|r| r.value.name.clone()).collect()
}

pub(super) fn identities(
    errs: &mut Errors,
    raw: &[Spanned<RawIdentity>],
    has_client_ca: bool,
) -> Identities {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    let mut users = HashSet::new();
    let mut tokens = HashSet::new();
    for (i, r) in raw.iter().enumerate() {
        let key = format!("identities[{i}]");
        let v = &r.value;
        if !valid_name(&v.name) {
            errs.at(
                format!("{key}.name"),
                Some(r),
                format!(
                    "{:?} is not a valid identity name (use letters, digits, '-', '_', '.')",
                    v.name
                ),
            );
        }
        if !names.insert(v.name.clone()) {
            errs.at(
                format!("{key}.name"),
                Some(r),
                format!("duplicate identity name {:?}", v.name),
            );
        }
        let tenant = match TenantId::parse_with(&v.tenant, true) {
            Ok(t) => Some(t),
            Err(e) => {
                errs.at(
                    format!("{key}.tenant"),
                    Some(r),
                    format!("{:?} is not a valid tenant ID: {e}", v.tenant),
                );
                None
            }
        };
        let given = [
            v.basic_auth.is_some(),
            v.bearer_token.is_some(),
            v.client_cert.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 {
            errs.at(
                &key,
                Some(r),
                "set exactly one of basic_auth, bearer_token, client_cert",
            );
            continue;
        }
        let credential = if let Some(b) = &v.basic_auth {
            if b.user.is_empty() || b.user.contains(':') {
                errs.at(
                    format!("{key}.basic_auth.user"),
                    Some(r),
                    "must be non-empty and contain no ':'",
                );
                None
            } else if !users.insert(b.user.clone()) {
                errs.at(
                    format!("{key}.basic_auth.user"),
                    Some(r),
                    format!("user {:?} belongs to another identity already", b.user),
                );
                None
            } else {
                let hash = match (&b.password_hash, &b.htpasswd_file) {
                    (Some(h), None) => check_bcrypt_hash(h)
                        .map(|()| h.clone())
                        .map_err(|e| (format!("{key}.basic_auth.password_hash"), e)),
                    (None, Some(f))
                        if errs.skip(format!("{key}.basic_auth.htpasswd_file: {f}")) =>
                    {
                        Ok(crate::auth::placeholder_hash())
                    }
                    (None, Some(f)) => htpasswd_hash(&errs.path(f), &b.user)
                        .map_err(|e| (format!("{key}.basic_auth.htpasswd_file"), e)),
                    _ => Err((
                        format!("{key}.basic_auth"),
                        "set exactly one of password_hash, htpasswd_file".to_owned(),
                    )),
                };
                match hash {
                    Ok(hash) => Some(Credential::Basic {
                        user: b.user.clone(),
                        hash,
                    }),
                    Err((k, e)) => {
                        errs.at(k, Some(r), e);
                        None
                    }
                }
            }
        } else if let Some(t) = &v.bearer_token {
            let token = match (&t.file, &t.env) {
                (Some(f), None) if errs.skip(format!("{key}.bearer_token.file: {f}")) => {
                    Ok(format!("unread-token-of-{}", v.name))
                }
                (None, Some(var)) if errs.skip(format!("{key}.bearer_token.env: ${var}")) => {
                    Ok(format!("unread-token-of-{}", v.name))
                }
                (Some(f), None) => std::fs::read_to_string(errs.path(f))
                    .map(|s| s.trim().to_owned())
                    .map_err(|e| {
                        (
                            format!("{key}.bearer_token.file"),
                            format!("cannot read {}: {e}", super::shown_path(&errs.path(f))),
                        )
                    }),
                (None, Some(var)) => {
                    std::env::var(var)
                        .map(|s| s.trim().to_owned())
                        .map_err(|_| {
                            (
                                format!("{key}.bearer_token.env"),
                                format!("environment variable {var} is not set"),
                            )
                        })
                }
                _ => Err((
                    format!("{key}.bearer_token"),
                    "set exactly one of file, env".to_owned(),
                )),
            };
            match token {
                Ok(tok) if tok.len() < MIN_TOKEN_LEN => {
                    errs.at(
                        format!("{key}.bearer_token"),
                        Some(r),
                        format!("the token is shorter than {MIN_TOKEN_LEN} characters"),
                    );
                    None
                }
                Ok(tok) if tok.contains(char::is_whitespace) || !tok.is_ascii() => {
                    errs.at(
                        format!("{key}.bearer_token"),
                        Some(r),
                        "the token must be printable ASCII without spaces",
                    );
                    None
                }
                Ok(tok) => {
                    let digest = token_digest(&tok);
                    if !tokens.insert(digest) {
                        errs.at(
                            format!("{key}.bearer_token"),
                            Some(r),
                            "the same token belongs to another identity",
                        );
                        None
                    } else {
                        Some(Credential::Bearer(digest))
                    }
                }
                Err((k, e)) => {
                    errs.at(k, Some(r), e);
                    None
                }
            }
        } else if let Some(c) = &v.client_cert {
            let names = [
                c.cn.clone().map(CertName::Cn),
                c.dns.clone().map(CertName::Dns),
                c.uri.clone().map(CertName::Uri),
                c.email.clone().map(CertName::Email),
            ];
            let mut set: Vec<CertName> = names.into_iter().flatten().collect();
            if !has_client_ca {
                errs.at(
                    format!("{key}.client_cert"),
                    Some(r),
                    "client certificates need server.tls.client_ca_file",
                );
            }
            if set.len() != 1 {
                errs.at(
                    format!("{key}.client_cert"),
                    Some(r),
                    "set exactly one of cn, dns, uri, email",
                );
                None
            } else {
                set.pop().map(Credential::ClientCert)
            }
        } else {
            None
        };
        if let (Some(tenant), Some(credential)) = (tenant, credential) {
            out.push(Identity {
                name: v.name.as_str().into(),
                tenant,
                credential,
            });
        }
    }
    Identities::new(out)
}

/// Builds a route's tenant source.
pub(super) fn tenant_source(
    errs: &mut Errors,
    key: &str,
    raw: &Spanned<RawTenant>,
    identities: &Identities,
) -> Option<TenantSource> {
    let key = format!("{key}.tenant");
    match &raw.value {
        RawTenant::Fixed(s) => match TenantId::parse(s) {
            Ok(t) => Some(TenantSource::Fixed(t)),
            Err(e) => {
                errs.at(
                    &key,
                    Some(raw),
                    format!("{s:?} is not a valid tenant ID: {e}"),
                );
                None
            }
        },
        RawTenant::Source(src) => match src.from.as_str() {
            "identity" | "header" if super::label_tenant::has_label_keys(src) => {
                errs.at(
                    &key,
                    Some(raw),
                    "labels, default, remove_label, prefix, forbidden and max_tenants belong to `from: label`",
                );
                None
            }
            "identity" => {
                if src.allow.is_some() || src.aliases.is_some() {
                    errs.at(
                        &key,
                        Some(raw),
                        "allow and aliases belong to `from: header`",
                    );
                }
                if identities.is_empty() && errs.identity_names.is_empty() {
                    errs.at(
                        &key,
                        Some(raw),
                        "`from: identity` needs an `identities` section",
                    );
                    return None;
                }
                let allowed = src.identities.as_ref().map(|list| {
                    for name in list {
                        // An identity that failed its own checks is already reported; naming it
                        // again as unknown on every route would only bury that error.
                        if identities.get(name).is_none() && !errs.identity_names.contains(name) {
                            let known: Vec<&str> =
                                errs.identity_names.iter().map(String::as_str).collect();
                            errs.at(
                                format!("{key}.identities"),
                                Some(raw),
                                format!("unknown identity {name:?} (known: {})", known.join(", ")),
                            );
                        }
                    }
                    list.iter().map(|n| n.as_str().into()).collect()
                });
                Some(TenantSource::Identity {
                    allowed,
                    federation: src.federation,
                })
            }
            "header" => {
                if src.identities.is_some() {
                    errs.at(&key, Some(raw), "identities belongs to `from: identity`");
                }
                let Some(allow_raw) = src.allow.as_ref().filter(|a| !a.is_empty()) else {
                    errs.at(format!("{key}.allow"), Some(raw), "`from: header` needs a non-empty allow list: trusting any tenant a client names is never safe");
                    return None;
                };
                let mut allow = Vec::new();
                for a in allow_raw {
                    match TenantId::parse(a) {
                        Ok(t) => allow.push(t),
                        Err(e) => errs.at(
                            format!("{key}.allow"),
                            Some(raw),
                            format!("{a:?} is not a valid tenant ID: {e}"),
                        ),
                    }
                }
                let mut aliases = BTreeMap::new();
                for (name, value) in src.aliases.iter().flatten() {
                    match TenantId::parse_with(value, src.federation) {
                        Ok(t) => {
                            for member in t.as_str().split('|') {
                                if !allow.iter().any(|a| a.as_str() == member) {
                                    errs.at(
                                        format!("{key}.aliases.{name}"),
                                        Some(raw),
                                        format!("tenant {member:?} is not in the allow list"),
                                    );
                                }
                            }
                            aliases.insert(name.clone(), t);
                        }
                        Err(InvalidTenant::Federation) => errs.at(
                            format!("{key}.aliases.{name}"),
                            Some(raw),
                            "'|' needs `federation: true`",
                        ),
                        Err(e) => errs.at(
                            format!("{key}.aliases.{name}"),
                            Some(raw),
                            format!("{value:?} is not a valid tenant ID: {e}"),
                        ),
                    }
                }
                Some(TenantSource::Header {
                    allow,
                    federation: src.federation,
                    aliases,
                })
            }
            "label" => super::label_tenant::label_source(errs, &key, raw, src, identities),
            other => {
                errs.at(format!("{key}.from"), Some(raw), format!("{other:?}: use `identity`, `header` or `label` (or a plain tenant ID instead of a map)"));
                None
            }
        },
    }
}

/// Loads the data listener's TLS.
pub(super) fn server_tls(errs: &mut Errors, raw: &Spanned<RawServerTls>) -> Option<ServerTls> {
    let t = &raw.value;
    let client_auth = match (t.client_auth.as_deref(), &t.client_ca_file) {
        (None, None) => ClientAuth::Off,
        (None | Some("required"), Some(_)) => ClientAuth::Required,
        (Some("optional"), Some(_)) => ClientAuth::Optional,
        (Some("required" | "optional"), None) => {
            errs.at("server.tls.client_auth", Some(raw), "needs client_ca_file");
            return None;
        }
        (Some(other), _) => {
            errs.at(
                "server.tls.client_auth",
                Some(raw),
                format!("{other:?}: use required or optional"),
            );
            return None;
        }
    };
    let timeout = t.handshake_timeout.map_or(Duration::from_secs(10), |d| d.0);
    if timeout.is_zero() {
        errs.at("server.tls.handshake_timeout", Some(raw), "must be > 0");
    }
    if errs.skip(format!(
        "server.tls: {}, {}{}",
        t.cert_file,
        t.key_file,
        t.client_ca_file
            .as_ref()
            .map(|c| format!(", {c}"))
            .unwrap_or_default()
    )) {
        return None;
    }
    match ServerTls::load(
        errs.path(&t.cert_file),
        errs.path(&t.key_file),
        t.client_ca_file.as_ref().map(|p| errs.path(p)),
        client_auth,
        timeout,
    ) {
        Ok(tls) => Some(tls),
        Err(e) => {
            errs.at("server.tls", Some(raw), e);
            None
        }
    }
}

/// Loads an upstream's TLS.
pub(super) fn upstream_tls(
    errs: &mut Errors,
    key: &str,
    raw: &Spanned<RawUpstreamTls>,
    https: bool,
) -> Option<UpstreamTls> {
    let t = &raw.value;
    if !https {
        errs.at(
            format!("{key}.tls"),
            Some(raw),
            "tls settings need an https:// URL",
        );
        return None;
    }
    if t.insecure_skip_verify && t.ca_file.is_some() {
        errs.at(
            format!("{key}.tls"),
            Some(raw),
            "ca_file and insecure_skip_verify contradict each other",
        );
        return None;
    }
    let files: Vec<&String> = [&t.ca_file, &t.cert_file, &t.key_file]
        .into_iter()
        .flatten()
        .collect();
    if !files.is_empty()
        && errs.skip(format!(
            "{key}.tls: {}",
            files
                .iter()
                .map(|f| f.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    {
        return None;
    }
    match UpstreamTls::load(
        t.ca_file.as_ref().map(|p| errs.path(p)),
        t.cert_file.as_ref().map(|p| errs.path(p)),
        t.key_file.as_ref().map(|p| errs.path(p)),
        t.server_name.clone(),
        t.insecure_skip_verify,
    ) {
        Ok(tls) => Some(tls),
        Err(e) => {
            errs.at(format!("{key}.tls"), Some(raw), e);
            None
        }
    }
}
