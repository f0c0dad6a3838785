//! What one reload costs: read, validate and compile a config file against a process's warm
//! stores, as the reloader does on a blocking-pool thread (the build is then dropped, as a
//! refused one would be). For every shipped config, and for a generated one of 200 routes and
//! 50 keys (30 HS256, 10 ES256, 10 RS256).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a benchmark, example or test: a failure should stop it loudly"
)]

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use tokengate::config::{load_file, Algorithm};
use tokengate::gateway::Gateway;
use tokengate::keys::generate_pem;
use tokengate::metrics::Metrics;
use tokengate::stores::Stores;

/// What the shipped files read from the environment, with values of the right shape.
const ENV: &[(&str, &str)] = &[
    ("CENTRIFUGO_TOKEN_HMAC_SECRET_KEY", "centrifugo-secret"),
    ("CHATSDK_API_KEY", "chatsdk-key"),
    ("CHATSDK_JWT_SECRET", "chatsdk-secret"),
    ("CM_API_KEY", "cm-key"),
    ("CM_API_SECRET", "cm-secret"),
    ("CM_ORGANIZATION_ID", "org-1"),
    ("DOTDIGITAL_AUDIENCE", "aud"),
    ("DOTDIGITAL_ID_CLAIM", "sub"),
    ("DOTDIGITAL_ISSUER", "iss"),
    ("DOTDIGITAL_SHARED_SECRET", "dotdigital-secret"),
    ("STREAM_API_KEY", "stream-key"),
    ("STREAM_API_SECRET", "stream-secret"),
    ("TELESIGN_CUSTOMER_ID", "CUST-1"),
    ("TOKENGATE_SECRET", "quickstart-secret"),
    ("TELESIGN_KEY", "dGVsZXNpZ24tc2VjcmV0"),
    ("TWILIO_ACCOUNT_SID", "AC0"),
    ("TWILIO_API_KEY_SECRET", "twilio-secret"),
    ("TWILIO_API_KEY_SID", "SK0"),
    ("TWILIO_CONVERSATIONS_SERVICE_SID", "IS0"),
];

/// A config of `routes` token routes over `keys` keys (a fifth ES256, a fifth RS256, the rest
/// HS256), each route with two limits and a session hook; PEM files written to `dir`.
fn generated(dir: &Path, routes: usize, keys: usize) -> PathBuf {
    let mut yaml = String::from("upstream: { url: 'http://127.0.0.1:3000' }\nkeys:\n");
    let mut ids = Vec::new();
    for i in 0..keys {
        let (id, alg) = match i % 5 {
            0 => (format!("es-{i}"), Some(Algorithm::ES256)),
            1 => (format!("rs-{i}"), Some(Algorithm::RS256)),
            _ => (format!("hs-{i}"), None),
        };
        match alg {
            Some(alg) => {
                let file = dir.join(format!("{id}.pem"));
                std::fs::write(&file, generate_pem(alg).unwrap()).unwrap();
                yaml.push_str(&format!(
                    "  - {{ id: {id}, algorithm: {}, private_key_file: {} }}\n",
                    if alg == Algorithm::ES256 { "ES256" } else { "RS256" },
                    file.display()
                ));
            }
            None => yaml.push_str(&format!("  - {{ id: {id}, algorithm: HS256, secret: secret-{i}-for-the-bench }}\n")),
        }
        ids.push(id);
    }
    yaml.push_str(
        "auth_hooks:\n  session: { type: http, url: 'http://127.0.0.1:3000/api/me', forward_headers: [cookie], identity: { id: body:/id, name: body:/name } }\n\
         rate_limits:\n  per_ip: { key: client_ip, rate: 20, per: 1m }\n  per_user: { key: user, rate: 10, per: 15m }\nroutes:\n",
    );
    for i in 0..routes {
        yaml.push_str(&format!(
            "  - {{ name: r{i}, path: '/t/{i}/{{x}}', auth: session, rate_limits: [per_ip, per_user], \
             tokens: {{ token: {{ key: {}, ttl: 1h, claims: {{ sub: '{{{{ user.id }}}}', name: '{{{{ user.name }}}}', x: '{{{{ path.x }}}}', jti: '{{{{ uuid }}}}' }} }} }}, \
             response: {{ body: {{ token: '{{{{ tokens.token }}}}', expiresIn: '{{{{ expires_in }}}}' }} }} }}\n",
            ids[i % ids.len()]
        ));
    }
    let file = dir.join("generated.yaml");
    std::fs::write(&file, yaml).unwrap();
    file
}

/// Compiles `file` against `stores` and drops the build.
fn rebuild(stores: &Stores, file: &Path) -> Gateway {
    let build = stores.begin();
    Gateway::build(load_file(file).unwrap(), &build, &Metrics::new())
        .unwrap_or_else(|e| panic!("{}: {e:?}", file.display()))
}

fn bench(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("tokengate-reload-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let es256 = dir.join("centrifugo.pem");
    std::fs::write(&es256, generate_pem(Algorithm::ES256).unwrap()).unwrap();
    for (k, v) in ENV {
        std::env::set_var(k, v);
    }
    std::env::set_var("CENTRIFUGO_PRIVATE_KEY_FILE", &es256);

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some("yaml".as_ref()))
        .collect();
    files.sort();
    files.push(generated(&dir, 200, 50));

    let mut group = c.benchmark_group("reload");
    group.sample_size(20);
    for file in &files {
        // A process's stores, warm from the first load, as a reload finds them.
        let stores = Stores::default();
        let build = stores.begin();
        let _running = Gateway::build(load_file(file).unwrap(), &build, &Metrics::new()).unwrap();
        build.commit();
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        group.bench_function(name, |b| b.iter(|| rebuild(&stores, file)));
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
