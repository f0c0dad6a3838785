//! The shipped profiles (`config/*.yaml`, embedded), for `tokengate init VENDOR`: each a ready,
//! commented config whose `check` passes once the environment variables it names are set.

/// One shipped profile: its name (the file's stem), the text, and a one-line summary.
pub struct Profile {
    pub name: &'static str,
    pub summary: &'static str,
    pub text: &'static str,
}

macro_rules! profile {
    ($name:literal, $summary:literal) => {
        Profile { name: $name, summary: $summary, text: include_str!(concat!("../config/", $name, ".yaml")) }
    };
}

/// Every file of `config/` (a test checks none is missing), and `blank`.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "blank",
        summary: "a commented skeleton: forward everything, one token route to fill in",
        text: BLANK,
    },
    profile!("quickstart", "forward to the app, one chat-token route behind its session endpoint (what `demo` runs)"),
    profile!("chatsdk", "ChatSDK: POST /tokens (X-API-Key) and /api/auth/chat-token (session), users upserted"),
    profile!("contactsmanager", "ContactsManager server-side token (POST /generate-token)"),
    profile!("dotdigital", "Dotdigital push challenge JWT (GET/POST /api/push/jwt?nonce=…)"),
    profile!("telesign", "Telesign App Verify (GET /v1/token/{phone}[/{xid}]), recorded for Get Status"),
    profile!("stream", "Stream Chat user token (user_id)"),
    profile!("centrifugo", "Centrifugo connection token, HS256"),
    profile!("centrifugo-es256", "Centrifugo connection token, ES256 verified through the JWK set"),
    profile!("twilio", "Twilio Access Token (Conversations chat grant)"),
    profile!("firebase", "Firebase Auth custom token, RS256 with the service-account key file Google issues"),
    profile!("supabase", "Supabase user JWT (role/aud authenticated) for row-level security"),
    profile!("ably", "Ably JWT for a client SDK's authUrl (clientId, capability, kid = key name)"),
    profile!("mux", "Mux signed playback tokens (video, thumbnail, storyboard) for a playback ID"),
    profile!(
        "forward-auth",
        "the decision service of nginx auth_request, Traefik, Caddy or Envoy: session, limits, an assertion"
    ),
    profile!("livekit", "LiveKit access token: join a room (video grants), TokenVerifier-checked"),
];

const BLANK: &str = r#"# tokengate: forwards every request to the app, and answers the token routes below itself.
# Env: TOKENGATE_SECRET (signs the tokens). `tokengate check --config FILE` lists every mistake.
listen: ${TOKENGATE_LISTEN:-0.0.0.0:8080}          # the app's public port now points here
admin_listen: ${TOKENGATE_ADMIN_LISTEN:-127.0.0.1:9901}   # /metrics /healthz /readyz /admin/*
upstream:
  url: ${TOKENGATE_UPSTREAM:-http://127.0.0.1:3000}  # where the app really listens

keys:
  - id: main
    algorithm: HS256                 # or RS256, ES256, EdDSA… with private_key_file (tokengate keygen)
    secret: ${TOKENGATE_SECRET}

auth_hooks:
  session:                           # ask the app who the caller is
    type: http
    url: ${TOKENGATE_SESSION_URL:-http://127.0.0.1:3000/api/me}
    forward_headers: [cookie, authorization]
    identity: { id: body:/id, name: body:/name }   # where the fields are in its 2xx answer
    cache: { ttl: 30s, negative_ttl: 2s }

rate_limits:
  per_user: { key: user, rate: 10, per: 15m }

routes:
  - name: token
    path: /api/token
    methods: [POST]
    auth: session
    rate_limits: [per_user]
    tokens:
      token:
        key: main
        ttl: 1h
        claims: { sub: "{{ user.id }}", name: "{{ user.name | \"\" }}" }
    response:
      body: { token: "{{ tokens.token }}", expiresIn: "{{ expires_in }}" }
"#;

impl Profile {
    /// The environment variables the profile needs set (`${VAR}` without a default, outside
    /// comments), in order of first use.
    pub fn required_env(&self) -> Vec<&'static str> {
        let mut vars = Vec::new();
        for line in self.text.lines() {
            // YAML comments: a whole line, or after " #".
            let code = line.split(" #").next().unwrap_or_default();
            if code.trim_start().starts_with('#') {
                continue;
            }
            let mut rest = code;
            while let Some(start) = rest.find("${") {
                let after = &rest[start + 2..];
                let Some(end) = after.find('}') else { break };
                let inside = &after[..end];
                if !inside.contains(":-") && !vars.contains(&inside) {
                    vars.push(inside);
                }
                rest = &after[end..];
            }
        }
        vars
    }
}

/// The profile named `name`.
pub fn find(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.name == name)
}
