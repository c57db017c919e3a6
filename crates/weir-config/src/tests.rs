use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> (Option<GatewayConfig>, Diagnostics) {
    load_str(text, Path::new("gw.yaml"), &no_env)
}

fn ok(text: &str) -> GatewayConfig {
    let (c, d) = load(text);
    d.finish().unwrap();
    c.unwrap()
}

fn errors(text: &str) -> ConfigErrors {
    load(text).1.finish().unwrap_err()
}

#[test]
fn minimal_config_gets_defaults() {
    let c = ok("gateway:\n  id: gh1\n");
    assert_eq!(c.topic_prefix(), "weir/gh1");
    assert_eq!(c.client_id(), "weir-gh1");
    assert_eq!(c.mqtt_port(), 1883);
    assert_eq!(c.mqtt.qos, 1);
    assert_eq!(c.store_path(), PathBuf::from("/var/lib/weir/outbox.db"));
}

#[test]
fn every_error_is_reported_with_path_and_line() {
    let text = "\
gateway:
  id: gh1
mqtt:
  host: 127.0.0.1
  qos: 2
  kepalive_s: 30
store:
  max_bytes: lots
sources:
  - sim:
      name: a
  - sim:
      name: a
colour: blue
";
    let e = errors(text);
    let s = e.to_string();
    // the unknown key in mqtt does not hide the qos check of that section
    assert!(
        s.contains("gw.yaml:6: mqtt.kepalive_s: unknown field `kepalive_s`"),
        "{s}"
    );
    assert!(s.contains("gw.yaml:5: mqtt.qos: 2 is not supported"), "{s}");
    assert!(
        s.contains("gw.yaml:8: store.max_bytes: invalid type"),
        "{s}"
    );
    assert!(
        s.contains("gw.yaml:13: sources[1].sim.name: duplicate source name `a`"),
        "{s}"
    );
    assert!(
        s.contains("gw.yaml:14: colour: unknown section `colour`"),
        "{s}"
    );
    assert_eq!(e.errors.len(), 5, "{s}");
}

#[test]
fn range_checks_name_their_key() {
    let text = "gateway:\n  id: 'gh 1'\nmqtt:\n  qos: 2\n  telemetry_topic: 'x/{device}'\n  keepalive_s: 65536\n  connect_timeout_ms: 0\n";
    let s = errors(text).to_string();
    // rumqttc writes keep alive as `secs as u16`: 65536 would silently become 0 (off)
    assert!(
        s.contains("gw.yaml:6: mqtt.keepalive_s: must be at most 65535"),
        "{s}"
    );
    assert!(
        s.contains("gw.yaml:7: mqtt.connect_timeout_ms: must be at least 1"),
        "{s}"
    );
    assert!(s.contains("gw.yaml:2: gateway.id:"), "{s}");
    assert!(s.contains("gw.yaml:4: mqtt.qos: 2 is not supported"), "{s}");
    assert!(
        s.contains("gw.yaml:5: mqtt.telemetry_topic: `x/{device}` must contain `{point}`"),
        "{s}"
    );
}

#[test]
fn syntax_error_has_a_line() {
    let e = errors("gateway:\n  id: [unclosed\n");
    assert_eq!(e.errors.len(), 1);
    assert!(e.errors[0].line.is_some(), "{e}");
}

#[test]
fn missing_gateway_section_is_an_error() {
    let e = errors("mqtt:\n  host: x\n");
    assert!(e.to_string().contains("missing section `gateway:`"), "{e}");
}

#[test]
fn env_substitution_and_secret_file() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let text = format!(
        "gateway:\n  id: ${{GW}}\nmqtt:\n  host: ${{HOST:-localhost}}\n  username: u\n  password_file: {}\n",
        pw.display()
    );
    let env = |k: &str| (k == "GW").then(|| "pi7".to_string());
    let (c, d) = load_str(&text, Path::new("gw.yaml"), &env);
    d.finish().unwrap();
    let c = c.unwrap();
    assert_eq!(c.gateway.id, "pi7");
    assert_eq!(c.mqtt.host, "localhost");
    assert_eq!(c.mqtt_password.as_ref().unwrap().expose(), "s3cret");
    assert!(!format!("{c:?}").contains("s3cret"));
}

#[test]
fn unset_variable_and_missing_secret_file_are_errors() {
    let text = "gateway:\n  id: ${GW}\nmqtt:\n  username: u\n  password_file: /nonexistent/pw\n";
    let e = errors(text).to_string();
    assert!(
        e.contains("gw.yaml:2: gateway.id: environment variable `GW` is not set"),
        "{e}"
    );
    assert!(
        e.contains("gw.yaml:5: mqtt.password_file: cannot read secret file /nonexistent/pw"),
        "{e}"
    );
}

#[test]
fn sources_are_split_by_kind_with_paths() {
    let text = "gateway:\n  id: g\nsources:\n  - sim:\n      name: demo\n      devices: 2\n  - modbus: {}\n  - 3\n";
    let (c, d) = load(text);
    let c = c.unwrap();
    assert_eq!(c.sources.len(), 2);
    assert_eq!(c.sources[0].kind, "sim");
    assert_eq!(c.sources[0].name, "demo");
    assert_eq!(c.sources[0].path, "sources[0].sim");
    assert!(c.sources[0].body.get("name").is_none());
    assert_eq!(c.sources[1].name, "modbus1");
    let e = d.finish().unwrap_err().to_string();
    assert!(
        e.contains("gw.yaml:8: sources[2]: must be a mapping"),
        "{e}"
    );
}

fn load_env(text: &str, vars: &[(&str, &str)]) -> (Option<GatewayConfig>, Diagnostics) {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    load_str(text, Path::new("gw.yaml"), &lookup)
}

#[test]
fn substituted_passwords_stay_text_whatever_they_look_like() {
    let text = "gateway:\n  id: g\nmqtt:\n  username: u\n  password: ${WEIR_MQTT_PASSWORD}\n";
    for pw in [
        "123456", "true", "0042", "1e3", "~", "null", "0x1F", "[1]", "a: b",
    ] {
        let (c, d) = load_env(text, &[("WEIR_MQTT_PASSWORD", pw)]);
        d.finish().unwrap_or_else(|e| panic!("{pw}: {e}"));
        assert_eq!(c.unwrap().mqtt_password.unwrap().expose(), pw);
    }
}

#[test]
fn substituted_numbers_and_booleans_read_where_the_field_is_one() {
    let text = "gateway:\n  id: ${ID}\nmqtt:\n  port: ${WEIR_MQTT_PORT:-1883}\n  keepalive_s: ${KA}\n  commands: ${CMD}\n  client_id: ${ID}\n";
    let (c, d) = load_env(text, &[("KA", "0"), ("CMD", "false"), ("ID", "0042")]);
    d.finish().unwrap();
    let c = c.unwrap();
    assert_eq!(c.mqtt.port, Some(1883));
    assert_eq!(c.mqtt.keepalive_s, 0);
    assert!(!c.mqtt.commands);
    assert_eq!(c.gateway.id, "0042");
    assert_eq!(c.client_id(), "0042");
    let (c, d) = load_env(
        text,
        &[
            ("KA", "60"),
            ("CMD", "true"),
            ("ID", "g"),
            ("WEIR_MQTT_PORT", "8884"),
        ],
    );
    d.finish().unwrap();
    assert_eq!(c.unwrap().mqtt.port, Some(8884));
}

/// No message may show a value that came from the environment: any of them may be a secret.
#[test]
fn errors_never_show_a_substituted_value() {
    let secret = "0042424242";
    let text = "\
gateway:
  id: g
mqtt:
  port: ${WEIR_MQTT_PASSWORD}
  qos: ${WEIR_MQTT_PASSWORD}
  protocol: ${WEIR_MQTT_PASSWORD}
  tls: ${WEIR_MQTT_PASSWORD}
metrics:
  listen: ${WEIR_MQTT_PASSWORD}
";
    let e = load_env(text, &[("WEIR_MQTT_PASSWORD", secret)])
        .1
        .finish()
        .unwrap_err();
    let s = e.to_string();
    assert!(!s.contains(secret) && !s.contains("42424242"), "{s}");
    for (line, key, expected) in [
        (4, "mqtt.port", "expected u16"),
        (5, "mqtt.qos", "expected u8"),
        (6, "mqtt.protocol", "expected"),
        (7, "mqtt.tls", "expected struct TlsSection"),
        (9, "metrics.listen", "expected socket address"),
    ] {
        assert!(
            s.contains(&format!(
                "gw.yaml:{line}: {key}: the value of `${{WEIR_MQTT_PASSWORD}}` does not fit here, {expected}"
            )),
            "{key}: {s}"
        );
    }
    assert_eq!(e.errors.len(), 5, "{s}");
}

/// A secret written unquoted is a YAML number or boolean: refused without echoing it.
#[test]
fn a_secret_that_is_not_text_is_refused_without_showing_it() {
    for pw in ["123456", "true", "12.5", "0x1F"] {
        let text = format!("gateway:\n  id: g\nmqtt:\n  username: u\n  password: {pw}\n");
        let e = load(&text).1.finish().unwrap_err().to_string();
        assert!(
            e.contains("gw.yaml:5: mqtt.password: a secret must be a string: quote it"),
            "{e}"
        );
        assert!(!e.contains(pw) && !e.contains("31"), "{e}");
    }
    // serde_yaml reads a leading zero as text: `0042` stays the password `0042`
    let c = ok("gateway:\n  id: g\nmqtt:\n  username: u\n  password: 0042\n");
    assert_eq!(c.mqtt_password.unwrap().expose(), "0042");
    // a broken reference inside a literal password does not quote the password either
    let e =
        errors("gateway:\n  id: g\nmqtt:\n  username: u\n  password: \"hunter2${x\"\n").to_string();
    assert!(e.contains("gw.yaml:5: mqtt.password: unterminated"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

#[test]
fn an_empty_substitution_counts_as_not_given() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "x").unwrap();
    let text = format!(
        "gateway:\n  id: g\nmqtt:\n  port: ${{WEIR_MQTT_PORT:-}}\n  keepalive_s: ${{KA:-}}\n  tls:\n    ca_file: {}\n",
        ca.display()
    );
    let (c, d) = load_env(&text, &[]);
    d.finish().unwrap();
    let c = c.unwrap();
    assert_eq!(c.mqtt.port, None);
    assert_eq!(c.mqtt_port(), 8883, "the documented default with tls");
    assert_eq!(c.mqtt.keepalive_s, 30);
    let (c, d) = load_env(&text, &[("WEIR_MQTT_PORT", "8884")]);
    d.finish().unwrap();
    assert_eq!(c.unwrap().mqtt_port(), 8884);
    // a required key left empty says why it is missing
    let e = load_env("gateway:\n  id: ${GW:-}\n", &[])
        .1
        .finish()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "gw.yaml:1: gateway: missing field `id` (`${GW}` is empty, which counts as not given)"
        ),
        "{e}"
    );
}

/// The shipped reference file must not pin the port: "8883 when tls is set" has to hold.
#[test]
fn reference_file_leaves_the_port_to_its_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../gateway.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let (c, _) = load_env(&text, &[]);
    let c = c.unwrap();
    assert_eq!(
        c.mqtt.port, None,
        "gateway.yaml sets mqtt.port without WEIR_MQTT_PORT"
    );
    assert_eq!(c.mqtt_port(), 1883);
    let (c, _) = load_env(&text, &[("WEIR_MQTT_PORT", "1884")]);
    assert_eq!(c.unwrap().mqtt_port(), 1884);
}

/// Several mistakes in one section are all reported, each at its own line and path, and range
/// checks still run on the keys that read.
#[test]
fn every_mistake_of_a_section_is_reported() {
    let text = "\
gateway:
  id: gh1
mqtt:
  port: \"1883x\"
  keepalive_secs: 30
  qos: 2
  tls:
    cert_file: /x
store:
  synchronous: fast
  max_batch_readings: lots
  max_bytes: 10
bus:
  capacity_batches: 0
  capacity: 3
";
    let e = errors(text);
    let s = e.to_string();
    for want in [
        "gw.yaml:4: mqtt.port: invalid type: string \"1883x\", expected u16",
        "gw.yaml:5: mqtt.keepalive_secs: unknown field `keepalive_secs`",
        "gw.yaml:6: mqtt.qos: 2 is not supported",
        "gw.yaml:7: mqtt.tls: missing field `ca_file`",
        "gw.yaml:10: store.synchronous: unknown variant `fast`",
        "gw.yaml:11: store.max_batch_readings: invalid type: string \"lots\"",
        "gw.yaml:12: store.max_bytes: must be at least 65536 bytes",
        "gw.yaml:14: bus.capacity_batches: must be at least 1",
        "gw.yaml:15: bus.capacity: unknown field `capacity`",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    assert_eq!(e.errors.len(), 9, "{s}");
}

#[test]
fn a_removed_required_key_is_not_reported_twice() {
    let e = errors("gateway:\n  id: [1]\nmqtt:\n  tls:\n    ca_file: [x]\n  qos: 5\n");
    let s = e.to_string();
    assert!(
        s.contains("gw.yaml:2: gateway.id: invalid type: sequence"),
        "{s}"
    );
    assert!(
        s.contains("gw.yaml:5: mqtt.tls.ca_file: invalid type: sequence"),
        "{s}"
    );
    assert!(s.contains("gw.yaml:6: mqtt.qos: 5 is not supported"), "{s}");
    assert!(!s.contains("missing field"), "{s}");
    assert_eq!(e.errors.len(), 3, "{s}");
}

/// Adapters parse their sections through the same collector: every bad list item is reported
/// at its own index and line, even after earlier items were dropped.
#[test]
fn every_bad_list_item_is_reported_in_place() {
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Point {
        name: String,
        #[serde(default)]
        scale: f64,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Device {
        points: Vec<Point>,
    }
    let text = "\
dev:
  points:
    - {name: a, scale: x}
    - {scale: 1}
    - 3
    - {name: d, sclae: 1}
    - {name: e}
    - name: f
      scale: [1]
";
    let root: serde_yaml::Value = serde_yaml::from_str(text).unwrap();
    let mut d = Diagnostics::new(Path::new("gw.yaml"), PathIndex::build(text));
    assert!(d.parse::<Device>(root["dev"].clone(), "dev").is_none());
    let e = d.finish().unwrap_err();
    let s = e.to_string();
    for want in [
        "gw.yaml:3: dev.points[0].scale: invalid type: string \"x\", expected f64",
        "gw.yaml:4: dev.points[1]: missing field `name`",
        "gw.yaml:5: dev.points[2]: invalid type: integer `3`",
        "gw.yaml:6: dev.points[3].sclae: unknown field `sclae`",
        "gw.yaml:9: dev.points[5].scale: invalid type: sequence, expected f64",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
    assert_eq!(e.errors.len(), 5, "{s}");
}

/// A production file as a laptop sees it: an unset password variable, TLS and secret files that
/// do not exist, a source that is not valid here. Only `store` and `rules` reference variables
/// the laptop has.
const PRODUCTION: &str = "\
gateway:
  id: gh1
mqtt:
  host: broker.example
  username: gw
  password: ${WEIR_TEST_UNSET_PASSWORD}
  tls:
    ca_file: /nonexistent/weir/ca.pem
    cert_file: /nonexistent/weir/client.pem
    key_file: /nonexistent/weir/client.key
  qos: 7
bus:
  capacity_batches: 0
metrics:
  listen: ${WEIR_TEST_UNSET_LISTEN}
sources:
  - sim:
      greenhouses: ${WEIR_TEST_UNSET_N}
  - sim: 3
store:
  max_bytes: ${STORE_BYTES}
rules:
  - name: hot
    script: 'if r.value > ${LIMIT} { emit(\"hot\", 1); }'
";

fn load_only(
    text: &str,
    names: &[&str],
    vars: &[(&str, &str)],
) -> (Option<GatewayConfig>, Diagnostics) {
    let lookup = |k: &str| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    };
    load_str_for(text, Path::new("gw.yaml"), &lookup, &Sections::Only(names))
}

#[test]
fn only_the_sections_asked_for_are_expanded_read_and_validated() {
    let vars = [("STORE_BYTES", "1048576"), ("LIMIT", "25")];
    // `buffer stats`: gateway and store.
    let (c, d) = load_only(PRODUCTION, &["gateway", "store"], &vars);
    d.finish().unwrap();
    let c = c.unwrap();
    assert_eq!(c.gateway.id, "gh1");
    assert_eq!(c.store.max_bytes, 1_048_576);
    // the rest holds defaults: nothing of it was read
    assert!(c.sources.is_empty() && c.stages.is_empty() && c.mqtt_password.is_none());
    assert!(c.mqtt.tls.is_none() && c.metrics.listen.is_none());
    assert_eq!(c.mqtt.host, "127.0.0.1");
    assert_eq!(c.bus.capacity_batches, 1024);

    // `rules test`: gateway and rules, whose own variable is expanded.
    let (c, d) = load_only(PRODUCTION, &["gateway", "rules"], &vars);
    d.finish().unwrap();
    let c = c.unwrap();
    assert_eq!(c.stages.len(), 1);
    let (path, rules) = &c.stages[0];
    assert_eq!(path, "rules");
    assert_eq!(
        rules[0]["script"].as_str(),
        Some("if r.value > 25 { emit(\"hot\", 1); }")
    );
    assert_eq!(c.store.max_bytes, StoreSection::default().max_bytes);

    // The whole file: every one of those problems, each at its place.
    let (_, d) = load_env(PRODUCTION, &vars);
    let s = d.finish().unwrap_err().to_string();
    for want in [
        "gw.yaml:6: mqtt.password: environment variable `WEIR_TEST_UNSET_PASSWORD` is not set",
        "gw.yaml:8: mqtt.tls.ca_file: cannot read /nonexistent/weir/ca.pem",
        "gw.yaml:9: mqtt.tls.cert_file: cannot read",
        "gw.yaml:10: mqtt.tls.key_file: cannot read",
        "gw.yaml:11: mqtt.qos: 7 is not supported",
        "gw.yaml:13: bus.capacity_batches: must be at least 1",
        "gw.yaml:15: metrics.listen: environment variable `WEIR_TEST_UNSET_LISTEN` is not set",
        "gw.yaml:18: sources[0].sim.greenhouses: environment variable `WEIR_TEST_UNSET_N`",
        "gw.yaml:19: sources[1].sim: must be a mapping",
    ] {
        assert!(s.contains(want), "missing {want:?} in\n{s}");
    }
}

#[test]
fn a_section_asked_for_is_still_checked_in_full() {
    // rules read variables of their own section only, and an unset one is an error there
    let (_, d) = load_only(PRODUCTION, &["gateway", "rules"], &[]);
    let e = d.finish().unwrap_err();
    assert_eq!(e.errors.len(), 1, "{e}");
    assert!(
        e.to_string()
            .contains("gw.yaml:24: rules[0].script: environment variable `LIMIT` is not set"),
        "{e}"
    );
    // a missing secret file is an error when its section is asked for, not otherwise
    let text = "gateway:\n  id: gh1\nmqtt:\n  username: u\n  password_file: /nonexistent/weir/pw\n";
    let (_, d) = load_only(text, &["gateway", "store"], &[]);
    d.finish().unwrap();
    let (_, d) = load_only(text, &["gateway", "mqtt"], &[]);
    let s = d.finish().unwrap_err().to_string();
    assert!(
        s.contains("gw.yaml:5: mqtt.password_file: cannot read secret file /nonexistent/weir/pw"),
        "{s}"
    );
    // `gateway` asked for and missing, or in error
    let (_, d) = load_only("store: {}\n", &["gateway", "store"], &[]);
    assert!(d
        .finish()
        .unwrap_err()
        .to_string()
        .contains("missing section `gateway:`"));
    let (_, d) = load_only("gateway:\n  id: ${GW}\n", &["gateway", "store"], &[]);
    assert!(d
        .finish()
        .unwrap_err()
        .to_string()
        .contains("gw.yaml:2: gateway.id"));
}

#[test]
fn the_whole_text_is_still_checked_when_only_some_sections_are_asked_for() {
    let only = ["gateway", "store"];
    // a YAML syntax error anywhere in the file
    let (c, d) = load_only("gateway:\n  id: gh1\nrules: [\n", &only, &[]);
    assert!(c.is_none());
    assert!(d.finish().unwrap_err().errors[0].line.is_some());
    // not a mapping
    let (c, d) = load_only("- gateway\n", &only, &[]);
    assert!(c.is_none());
    assert!(d
        .finish()
        .unwrap_err()
        .to_string()
        .contains("must be a mapping"));
    // an unknown (misspelt) section, asked for or not
    let (_, d) = load_only("gateway:\n  id: gh1\nmqt:\n  host: x\n", &only, &[]);
    let s = d.finish().unwrap_err().to_string();
    assert!(s.contains("gw.yaml:3: mqt: unknown section `mqt`"), "{s}");
}

#[test]
fn sparkplug_b_needs_its_section_and_valid_ids() {
    let c = ok("gateway:\n  id: gh1\nmqtt:\n  format: sparkplug_b\n  sparkplug:\n    group_id: plant\n    primary_host_id: scada\n");
    assert_eq!(c.mqtt.format, NorthboundFormat::SparkplugB);
    let sp = c.mqtt.sparkplug.unwrap();
    assert_eq!((sp.group_id.as_str(), sp.edge_node_id), ("plant", None));
    assert_eq!(
        ok("gateway:\n  id: gh1\n").mqtt.format,
        NorthboundFormat::Json
    );
    let s = errors("gateway:\n  id: gh1\nmqtt:\n  format: sparkplug_b\n").to_string();
    assert!(
        s.contains("mqtt.sparkplug: `format: sparkplug_b` needs"),
        "{s}"
    );
    let s = errors("gateway:\n  id: gh1\nmqtt:\n  sparkplug:\n    group_id: plant\n").to_string();
    assert!(s.contains("but `format` is `json`"), "{s}");
    let s = errors(
        "gateway:\n  id: gh1\nmqtt:\n  format: sparkplug_b\n  sparkplug:\n    group_id: a/b\n    edge_node_id: ''\n    primary_host_id: 'h#'\n",
    )
    .to_string();
    assert!(
        s.contains("gw.yaml:6: mqtt.sparkplug.group_id: `a/b` must be"),
        "{s}"
    );
    assert!(s.contains("mqtt.sparkplug.edge_node_id"), "{s}");
    assert!(s.contains("mqtt.sparkplug.primary_host_id"), "{s}");
    let s = errors("gateway:\n  id: gh1\nmqtt:\n  format: xml\n").to_string();
    assert!(s.contains("mqtt.format"), "{s}");
}

#[test]
fn home_assistant_discovery_keys_are_checked() {
    let c = ok("gateway:\n  id: gh1\nmqtt:\n  home_assistant: {}\n");
    let h = c.mqtt.home_assistant.unwrap();
    assert!(h.enabled);
    assert_eq!(h.prefix, "homeassistant");
    assert_eq!(ok("gateway:\n  id: gh1\n").mqtt.home_assistant, None);
    let s =
        errors("gateway:\n  id: gh1\nmqtt:\n  home_assistant:\n    prefix: 'ha/#'\n").to_string();
    assert!(
        s.contains("mqtt.home_assistant.prefix: `ha/#` must be"),
        "{s}"
    );
    let s = errors("gateway:\n  id: gh1\nmqtt:\n  home_assistant:\n    prefx: ha\n").to_string();
    assert!(s.contains("mqtt.home_assistant"), "{s}");
    let s = errors("gateway:\n  id: gh1\nmqtt:\n  mode: per_device\n  home_assistant: {}\n")
        .to_string();
    assert!(s.contains("set `mode: per_reading`"), "{s}");
    let s = errors(
        "gateway:\n  id: gh1\nmqtt:\n  format: sparkplug_b\n  sparkplug:\n    group_id: p\n  home_assistant: {}\n",
    )
    .to_string();
    assert!(s.contains("published by the `json` format"), "{s}");
    // Disabled: no constraint on the format.
    ok("gateway:\n  id: gh1\nmqtt:\n  mode: per_device\n  home_assistant:\n    enabled: false\n");
}

#[test]
fn shadow_keys_are_checked() {
    let c = ok("gateway:\n  id: gh1\nmqtt:\n  shadow: {}\n");
    let s = c.mqtt.shadow.unwrap();
    assert!(s.enabled);
    assert_eq!((s.retry_min_ms, s.retry_max_ms), (1000, 60_000));
    let e = errors("gateway:\n  id: gh1\nmqtt:\n  shadow:\n    retry_min_ms: 0\n").to_string();
    assert!(e.contains("mqtt.shadow.retry_min_ms"), "{e}");
    let e = errors("gateway:\n  id: gh1\nmqtt:\n  shadow:\n    retry: 1\n").to_string();
    assert!(e.contains("mqtt.shadow"), "{e}");
    let e = errors("gateway:\n  id: gh1\nmqtt:\n  mode: per_device\n  shadow: {}\n").to_string();
    assert!(e.contains("set `mode: per_reading`"), "{e}");
}
