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
    // the unknown key in mqtt hides the qos check of that section, everything else is reported
    assert!(
        s.contains("gw.yaml:6: mqtt.kepalive_s: unknown field `kepalive_s`"),
        "{s}"
    );
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
    assert_eq!(e.errors.len(), 4, "{s}");
}

#[test]
fn range_checks_name_their_key() {
    let text = "gateway:\n  id: 'gh 1'\nmqtt:\n  qos: 2\n  telemetry_topic: 'x/{device}'\n";
    let s = errors(text).to_string();
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
