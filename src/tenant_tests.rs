use super::*;

#[test]
fn accepts_every_character_mimir_accepts() {
    let all = "AZaz09!-_.*'()";
    assert_eq!(TenantId::parse(all).unwrap().as_str(), all);
    assert!(TenantId::parse("team-a").is_ok());
    assert!(TenantId::parse(&"a".repeat(150)).is_ok());
}

#[test]
fn rejects_characters_mimir_rejects() {
    for (s, c) in [
        ("a b", ' '),
        ("a/b", '/'),
        ("a:b", ':'),
        ("té", 'é'),
        ("a\nb", '\n'),
        ("a,b", ','),
    ] {
        assert_eq!(TenantId::parse(s), Err(InvalidTenant::BadChar(c)), "{s:?}");
    }
}

#[test]
fn rejects_empty_long_dots_and_reserved() {
    assert_eq!(TenantId::parse(""), Err(InvalidTenant::Empty));
    assert_eq!(
        TenantId::parse(&"a".repeat(151)),
        Err(InvalidTenant::TooLong)
    );
    assert_eq!(TenantId::parse("."), Err(InvalidTenant::Dots));
    assert_eq!(TenantId::parse(".."), Err(InvalidTenant::Dots));
    assert!(TenantId::parse("...").is_ok());
    assert_eq!(
        TenantId::parse("__mimir_cluster"),
        Err(InvalidTenant::Reserved)
    );
}

#[test]
fn federation_only_when_allowed() {
    assert_eq!(TenantId::parse("a|b"), Err(InvalidTenant::Federation));
    let t = TenantId::parse_with("a|b", true).unwrap();
    assert!(t.is_federated());
    assert_eq!(t.header_value(), "a|b");
    assert_eq!(
        TenantId::parse_with("a||b", true),
        Err(InvalidTenant::Empty)
    );
    assert_eq!(TenantId::parse_with("a|", true), Err(InvalidTenant::Empty));
    assert_eq!(TenantId::parse_with("a|..", true), Err(InvalidTenant::Dots));
    assert_eq!(
        TenantId::parse_with("team-a|team-b|team-a", true),
        Err(InvalidTenant::Duplicate("team-a".into()))
    );
}

fn header(v: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for x in v {
        h.append(TENANT_HEADER, HeaderValue::from_str(x).unwrap());
    }
    h
}

fn header_source(federation: bool) -> TenantSource {
    let mut aliases = BTreeMap::new();
    aliases.insert(
        "all".to_owned(),
        TenantId::parse_with("team-a|team-b", true).unwrap(),
    );
    TenantSource::Header {
        allow: vec![
            TenantId::parse("team-a").unwrap(),
            TenantId::parse("team-b").unwrap(),
        ],
        federation,
        aliases,
    }
}

async fn from_header(src: &TenantSource, v: &[&str]) -> Result<String, TenantError> {
    src.resolve(
        &header(v),
        None,
        std::net::IpAddr::from([127, 0, 0, 1]),
        &Identities::default(),
    )
    .await
    .map(|r| r.tenant.to_string())
}

#[tokio::test]
async fn header_source_accepts_only_the_allow_list() {
    let src = header_source(false);
    assert_eq!(from_header(&src, &["team-a"]).await, Ok("team-a".into()));
    assert!(matches!(
        from_header(&src, &["team-c"]).await,
        Err(TenantError::Forbidden(_))
    ));
    assert!(matches!(
        from_header(&src, &["team-a|team-b"]).await,
        Err(TenantError::Forbidden(_))
    ));
    assert!(matches!(
        from_header(&src, &["all"]).await,
        Err(TenantError::Forbidden(_))
    ));
    assert_eq!(
        from_header(&src, &[]).await,
        Err(TenantError::MissingHeader)
    );
    assert_eq!(
        from_header(&src, &[""]).await,
        Err(TenantError::MissingHeader)
    );
    assert!(matches!(
        from_header(&src, &["team-a", "team-b"]).await,
        Err(TenantError::BadHeader(_))
    ));
    assert!(matches!(
        from_header(&src, &["team a"]).await,
        Err(TenantError::BadHeader(_))
    ));
}

#[tokio::test]
async fn header_source_with_federation_and_aliases() {
    let src = header_source(true);
    assert_eq!(
        from_header(&src, &["team-a|team-b"]).await,
        Ok("team-a|team-b".into())
    );
    assert_eq!(
        from_header(&src, &["all"]).await,
        Ok("team-a|team-b".into())
    );
    assert!(matches!(
        from_header(&src, &["team-a|team-c"]).await,
        Err(TenantError::Forbidden(_))
    ));
}

#[test]
fn error_messages_name_the_problem() {
    assert_eq!(
        InvalidTenant::Federation.to_string(),
        "'|' is not allowed (tenant federation is off for this route)"
    );
    assert_eq!(
        InvalidTenant::BadChar('/').to_string(),
        "'/' is not allowed"
    );
}
