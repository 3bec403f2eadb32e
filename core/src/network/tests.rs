use super::*;

fn d(s: &str) -> Destination {
    s.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn grant(connect: &[&str], udp: &[&str]) -> NetworkGrant {
    NetworkGrant {
        connect: connect.iter().map(|s| d(s)).collect(),
        udp: udp.iter().map(|s| d(s)).collect(),
        serve_http: false,
    }
}

#[test]
fn parses_every_form_and_prints_it_back() {
    for s in [
        "broker.local:1883",
        "api.example.com:443",
        "*.example.org:443",
        "10.0.0.5:502",
        "10.0.0.0/8",
        "192.168.0.0/16:80",
        "[::1]:80",
        "[fd00::/8]",
        "*.local",
    ] {
        assert_eq!(d(s).to_string(), s, "{s}");
    }
    assert_eq!(d("API.Example.COM.:443").to_string(), "api.example.com:443");
}

#[test]
fn refuses_what_is_not_a_destination() {
    for (s, want) in [
        ("", "destination is empty"),
        ("host:0", "invalid port"),
        ("host:99999", "invalid port"),
        ("host:http", "invalid port"),
        ("bad host:80", "invalid host name"),
        ("-x.example:80", "invalid host name"),
        ("a..b:80", "invalid host name"),
        ("*:80", "invalid host name"),
        ("**.a:80", "invalid host name"),
        ("10.0.0.0/33", "invalid network"),
        ("10.0.0.0/x", "invalid network"),
        ("::1", "brackets"),
        ("[::1", "brackets"),
        ("[::1]80", "invalid port"),
    ] {
        let e = s.parse::<Destination>().unwrap_err().to_string();
        assert!(e.contains(want), "{s}: {e}");
    }
    let long = format!("{}.com:80", "a.".repeat(130));
    assert!(long.parse::<Destination>().is_err());
}

#[test]
fn a_manifest_grant_names_ports() {
    let g = grant(&["broker.local:1883"], &[]);
    g.validate().unwrap();
    let mut g = grant(&["broker.local"], &[]);
    let e = g.validate().unwrap_err().to_string();
    assert!(e.contains("`broker.local` names no port"), "{e}");
    g.connect = vec![d("a:1"); MAX_DESTINATIONS + 1];
    assert!(g.validate().is_err());
}

#[test]
fn wildcards_cover_names_below_not_the_name_itself() {
    let h = d("*.example.org:443").host;
    assert!(h.matches_name("a.example.org"));
    assert!(h.matches_name("A.B.Example.org."));
    assert!(!h.matches_name("example.org"));
    assert!(!h.matches_name("badexample.org"));
    assert!(!h.matches_ip("10.0.0.1".parse().unwrap()));
}

#[test]
fn blocks_match_both_address_forms() {
    let h = d("10.0.0.0/8").host;
    assert!(h.matches_ip("10.200.1.1".parse().unwrap()));
    assert!(h.matches_ip("::ffff:10.1.2.3".parse().unwrap()));
    assert!(!h.matches_ip("11.0.0.1".parse().unwrap()));
    let ip = d("10.0.0.5:502").host;
    assert!(ip.matches_ip("::ffff:10.0.0.5".parse().unwrap()));
    assert!(d("0.0.0.0/0").host.matches_ip("8.8.8.8".parse().unwrap()));
    assert!(d("[fd00::/8]").host.matches_ip("fd12::1".parse().unwrap()));
    assert!(!d("[fd00::/8]").host.matches_ip("fe80::1".parse().unwrap()));
}

#[test]
fn nothing_is_allowed_by_default() {
    let p = NetworkPolicy::default();
    assert!(p.denies_all());
    assert_eq!(p.may_resolve("example.com"), Err(Refusal::NotGranted));
    assert_eq!(
        p.may_connect(Transport::Tcp, addr("10.0.0.5:502"), &[]),
        Err(Refusal::NotGranted)
    );
}

#[test]
fn a_service_reaches_granted_addresses_and_resolved_names_only() {
    let p = NetworkPolicy::new(
        &grant(&["broker.local:1883", "10.0.0.5:502"], &["10.0.0.5:514"]),
        None,
    );
    assert!(!p.denies_all());
    p.may_resolve("broker.local").unwrap();
    assert_eq!(p.may_resolve("evil.example"), Err(Refusal::NotGranted));
    // The name's address, when it came from looking the name up.
    let broker = addr("192.168.1.20:1883");
    p.may_connect(Transport::Tcp, broker, &["broker.local"])
        .unwrap();
    assert_eq!(
        p.may_connect(Transport::Tcp, broker, &[]),
        Err(Refusal::NotGranted)
    );
    // A granted host on another port.
    assert_eq!(
        p.may_connect(Transport::Tcp, addr("192.168.1.20:22"), &["broker.local"]),
        Err(Refusal::NotGranted)
    );
    p.may_connect(Transport::Tcp, addr("10.0.0.5:502"), &[])
        .unwrap();
    // TCP grants are not UDP grants, and the other way round.
    assert_eq!(
        p.may_connect(Transport::Udp, addr("10.0.0.5:502"), &[]),
        Err(Refusal::NotGranted)
    );
    p.may_connect(Transport::Udp, addr("10.0.0.5:514"), &[])
        .unwrap();
    assert_eq!(
        p.may_connect(Transport::Tcp, addr("10.0.0.5:514"), &[]),
        Err(Refusal::NotGranted)
    );
}

#[test]
fn a_device_narrows_what_a_service_was_granted() {
    let g = grant(&["api.example.com:443", "broker.local:1883"], &[]);
    let local = [d("192.168.0.0/16"), d("*.local")];
    let p = NetworkPolicy::new(&g, Some(&local));
    // Lookups: a device with address blocks leaves it to the connection.
    p.may_resolve("api.example.com").unwrap();
    assert_eq!(
        p.may_connect(
            Transport::Tcp,
            addr("93.184.216.34:443"),
            &["api.example.com"]
        ),
        Err(Refusal::NotAllowedHere)
    );
    p.may_connect(Transport::Tcp, addr("192.168.1.20:1883"), &["broker.local"])
        .unwrap();
    // A device listing names only refuses the lookup itself.
    let names_only = [d("*.local")];
    let p = NetworkPolicy::new(&g, Some(&names_only));
    assert_eq!(
        p.may_resolve("api.example.com"),
        Err(Refusal::NotAllowedHere)
    );
    p.may_resolve("broker.local").unwrap();
    // An empty allow list is no network.
    let p = NetworkPolicy::new(&g, Some(&[]));
    assert!(p.denies_all());
    assert!(!p.allows(Transport::Tcp));
    assert_eq!(p.may_resolve("broker.local"), Err(Refusal::NotAllowedHere));
    // A port on the device's list narrows too.
    let p = NetworkPolicy::new(&g, Some(&[d("*.local:8883")]));
    assert_eq!(
        p.may_connect(Transport::Tcp, addr("192.168.1.20:1883"), &["broker.local"]),
        Err(Refusal::NotAllowedHere)
    );
}

#[test]
fn the_device_says_which_grants_it_rules_out() {
    let g = grant(
        &["api.example.com:443", "broker.local:1883", "10.0.0.5:502"],
        &["10.0.0.5:514"],
    );
    let shown = |p: &NetworkPolicy| {
        p.narrowed_away()
            .iter()
            .map(|(t, d)| format!("{t} {d}"))
            .collect::<Vec<_>>()
    };
    assert!(shown(&NetworkPolicy::new(&g, None)).is_empty());
    assert_eq!(
        shown(&NetworkPolicy::new(&g, Some(&[]))),
        [
            "tcp api.example.com:443",
            "tcp broker.local:1883",
            "tcp 10.0.0.5:502",
            "udp 10.0.0.5:514"
        ]
    );
    // Names only: addresses are ruled out, and names not covered.
    assert_eq!(
        shown(&NetworkPolicy::new(&g, Some(&[d("*.local")]))),
        [
            "tcp api.example.com:443",
            "tcp 10.0.0.5:502",
            "udp 10.0.0.5:514"
        ]
    );
    // A block may hold what any name resolves to...
    assert!(shown(&NetworkPolicy::new(&g, Some(&[d("10.0.0.0/8")]))).is_empty());
    // ...on the ports it names.
    assert_eq!(
        shown(&NetworkPolicy::new(&g, Some(&[d("10.0.0.0/8:502")]))),
        [
            "tcp api.example.com:443",
            "tcp broker.local:1883",
            "udp 10.0.0.5:514"
        ]
    );
}

#[test]
fn grants_read_from_toml_and_refuse_typos() {
    let g: NetworkGrant = toml::from_str(
        r#"connect = ["broker.local:1883", "*.example.org:443"]
           serve-http = true"#,
    )
    .unwrap();
    assert_eq!(g.connect.len(), 2);
    assert!(g.serve_http);
    let e = toml::from_str::<NetworkGrant>(r#"conect = ["a:1"]"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("conect"), "{e}");
    let e = toml::from_str::<NetworkGrant>(r#"connect = ["a b:1"]"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid host name"), "{e}");
    // And back to the JSON a signed file embeds.
    let json = serde_json::to_string(&g).unwrap();
    assert_eq!(
        json,
        r#"{"connect":["broker.local:1883","*.example.org:443"],"serve-http":true}"#
    );
}
