use super::*;

#[test]
fn vip_range_parses_masks_and_counts() {
    let r: VipRange = "240.240.7.9/16".parse().unwrap();
    assert_eq!(r.to_string(), "240.240.0.0/16");
    assert_eq!(r.len(), 65_534);
    assert_eq!(r.nth(0), Some("240.240.0.1".parse().unwrap()));
    assert_eq!(r.nth(65_533), Some("240.240.255.254".parse().unwrap()));
    assert_eq!(r.nth(65_534), None);
    assert!(r.contains("240.240.3.3".parse().unwrap()));
    assert!(!r.contains("240.241.0.1".parse().unwrap()));
    assert!(!r.contains("::1".parse().unwrap()));

    let v6: VipRange = "fd00:5::/112".parse().unwrap();
    assert_eq!(v6.len(), 65_534);
    assert_eq!(v6.nth(0), Some("fd00:5::1".parse().unwrap()));

    for bad in ["240.240.0.0", "240.240.0.0/33", "x/8", "::/129"] {
        assert!(bad.parse::<VipRange>().is_err(), "{bad}");
    }
}

#[test]
fn upstream_defaults_to_port_53() {
    assert_eq!(
        "10.0.0.10".parse::<Upstream>().unwrap().0,
        "10.0.0.10:53".parse::<SocketAddr>().unwrap()
    );
    assert_eq!("[::1]:5353".parse::<Upstream>().unwrap().0.port(), 5353);
    assert!("host:53".parse::<Upstream>().is_err());
}

#[test]
fn search_domains_default_from_the_namespace() {
    let dns = Dns::default();
    assert_eq!(
        dns.search_domains("shop"),
        [
            "shop.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ]
    );
    let dns = Dns {
        search_domains: Some(vec!["Corp.Example.".into()]),
        ..Dns::default()
    };
    assert_eq!(dns.search_domains("shop"), ["corp.example"]);
}

fn problems(yaml: &str) -> Vec<String> {
    let parsed = crate::config::parse_str(
        yaml,
        std::path::Path::new("."),
        &crate::config::MapOverrides::default(),
    );
    match parsed {
        Ok(_) => vec![],
        Err(e) => e.problems().iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn the_defaults_are_valid_and_off() {
    let dns = crate::config::parse_str(
        "dns: {}\n",
        std::path::Path::new("."),
        &crate::config::MapOverrides::default(),
    )
    .unwrap()
    .config
    .dns;
    assert_eq!(dns, Dns::default());
    assert!(!dns.enabled);
    assert_eq!(dns.listen.port(), 15053);
    assert_eq!(dns.vip_range.to_string(), "240.240.0.0/16");
}

#[test]
fn every_dns_rule_names_its_field() {
    let cases = [
        ("dns: {ttl: 2d}", "dns.ttl: "),
        ("dns: {upstreamTimeout: 0s}", "dns.upstreamTimeout: "),
        ("dns: {upstreamTimeout: 31s}", "dns.upstreamTimeout: "),
        ("dns: {onDemandTimeout: 11s}", "dns.onDemandTimeout: "),
        ("dns: {cacheSize: 1000001}", "dns.cacheSize: "),
        (
            "dns: {searchDomains: [ok.example, \"bad domain\"]}",
            "dns.searchDomains[1]: ",
        ),
        (
            "dns: {vipRange: 10.0.0.0/31}",
            "dns.vipRange: 10.0.0.0/31: prefix length",
        ),
        (
            "dns: {vipRange: \"fd00::/48\"}",
            "dns.vipRange: fd00::/48: prefix length",
        ),
        ("dns: {vipRange: 10.0.0.0}", "dns.vipRange: "),
        ("dns: {upstreams: [\"nope\"]}", "dns.upstreams[0]: "),
        (
            "dns: {upstreams: [\"127.0.0.1:15053\"]}",
            "dns.upstreams[0]: 127.0.0.1:15053 is the shim's own address",
        ),
        (
            "dns: {enabled: true, listen: \"127.0.0.1:15000\"}",
            "dns.listen: 127.0.0.1:15000 is also the admin address",
        ),
        (
            "listeners: {serviceVips: true}\ndns: {enabled: true}",
            "dns.vipRange: 240.240.0.0/16 is not a loopback range",
        ),
        ("dns: {enable: true}", "dns.enable: unknown field `enable`"),
    ];
    for (yaml, want) in cases {
        let p = problems(yaml);
        assert_eq!(p.len(), 1, "{yaml}: {p:?}");
        assert!(p[0].starts_with(want), "{yaml}: {p:?}");
    }
    // The same range is fine without per-service listeners, or when loopback.
    assert!(problems(
        "listeners: {serviceVips: true}\ndns: {enabled: true, vipRange: 127.2.0.0/16}"
    )
    .is_empty());
    assert!(problems("dns: {enabled: true}").is_empty());
}

#[test]
fn start_only_settings_keep_their_running_values() {
    let running = Dns {
        enabled: true,
        ..Dns::default()
    };
    let mut new = Dns {
        enabled: false,
        ttl: Duration::from_secs(5),
        cache_size: 1,
        ..Dns::default()
    };
    assert!(new.keep_start_only(&running));
    assert!(new.enabled);
    assert_eq!(new.cache_size, running.cache_size);
    assert_eq!(new.ttl, Duration::from_secs(5), "ttl follows reloads");
    let mut same = running.clone();
    assert!(!same.keep_start_only(&running));
}

#[test]
fn domain_names_are_checked() {
    assert!(is_domain("a.svc.cluster.local"));
    assert!(is_domain("cluster.local."));
    assert!(!is_domain(""));
    assert!(!is_domain("a..b"));
    assert!(!is_domain("a b"));
}
