#!/usr/bin/env python3
"""Drive a live, headless Home Assistant (PyPI homeassistant 2024.3.3) through its REST API: the
by-hand check of Weir's discovery (README, "Home Assistant").

    ha_live.py setup  BASE_URL BROKER_PORT    onboard a user, add the MQTT integration -> token file
    ha_live.py states BASE_URL                print every entity of the MQTT integration (JSON lines)
    ha_live.py call   BASE_URL DOMAIN SERVICE ENTITY_ID [JSON_DATA]   call a service

HA is started by hand with a configuration.yaml holding `http`, `api`, `config` and `onboarding`
(see README); the token is kept in ./ha_token. Uses only the standard library.
"""
import json
import sys
import urllib.parse
import urllib.request

TOKEN_FILE = "ha_token"
CLIENT = "http://127.0.0.1/"


def req(base, path, data=None, token=None, form=False):
    headers = {}
    body = None
    if data is not None:
        if form:
            body = urllib.parse.urlencode(data).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = json.dumps(data).encode()
            headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    r = urllib.request.Request(base + path, data=body, headers=headers)
    with urllib.request.urlopen(r, timeout=300) as resp:
        return json.loads(resp.read() or b"null")


def setup(base, port):
    try:
        tok = token()  # onboarded already (a second attempt at the MQTT step)
    except FileNotFoundError:
        code = req(base, "/api/onboarding/users", {
            "client_id": CLIENT, "name": "weir", "username": "weir", "password": "weir-test-pw",
            "language": "en"})["auth_code"]
        tok = req(base, "/auth/token", {"grant_type": "authorization_code", "code": code,
                                        "client_id": CLIENT}, form=True)["access_token"]
        with open(TOKEN_FILE, "w") as f:
            f.write(tok)
    flow = req(base, "/api/config/config_entries/flow", {"handler": "mqtt"}, token=tok)
    print(json.dumps({"flow": flow.get("step_id"), "type": flow.get("type")}))
    res = req(base, f"/api/config/config_entries/flow/{flow['flow_id']}",
              {"broker": "127.0.0.1", "port": int(port)}, token=tok)
    print(json.dumps({"result": res.get("type"), "title": res.get("title")}))


def token():
    with open(TOKEN_FILE) as f:
        return f.read().strip()


def states(base):
    for s in req(base, "/api/states", token=token()):
        if s["entity_id"].split(".")[0] in ("sensor", "binary_sensor", "switch", "number", "button", "text"):
            a = s["attributes"]
            print(json.dumps({"entity_id": s["entity_id"], "state": s["state"],
                              "unit": a.get("unit_of_measurement"),
                              "device_class": a.get("device_class"),
                              "state_class": a.get("state_class"),
                              "name": a.get("friendly_name")}, ensure_ascii=False))


def call(base, domain, service, entity, data=None):
    body = {"entity_id": entity, **(json.loads(data) if data else {})}
    print(json.dumps(req(base, f"/api/services/{domain}/{service}", body, token=token())))


if __name__ == "__main__":
    cmd, base = sys.argv[1], sys.argv[2].rstrip("/")
    if cmd == "setup":
        setup(base, sys.argv[3])
    elif cmd == "states":
        states(base)
    elif cmd == "call":
        call(base, *sys.argv[3:])
    else:
        sys.exit(__doc__)
