//! TLS to PostgreSQL, as `sslmode` asks: a server with a certificate for `localhost` from a
//! CA made here.

use gust_store::Store;
use gust_testkit::postgres::{PgCluster, postgres_bin};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

/// A CA: its certificate (PEM) and what signs with it.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    Ca {
        cert: params.self_signed(&key).unwrap(),
        key,
    }
}

#[tokio::test]
async fn sslmode_is_honoured() {
    if postgres_bin().unwrap().is_none() {
        eprintln!("skipping: PostgreSQL is not installed");
        return;
    }
    let trusted = ca("gust test CA");
    let stranger = ca("another CA");
    let server_key = KeyPair::generate().unwrap();
    // For `localhost` only: reached as 127.0.0.1, the name does not match.
    let server = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &trusted.cert, &trusted.key)
        .unwrap();
    let cluster = PgCluster::builder()
        .file("server.crt", server.pem())
        .file("server.key", server_key.serialize_pem())
        .setting("ssl", "on")
        .setting("ssl_cert_file", "server.crt")
        .setting("ssl_key_file", "server.key")
        .start()
        .unwrap();
    cluster.create_database("tls").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let trusted_pem = dir.path().join("trusted.pem");
    let stranger_pem = dir.path().join("stranger.pem");
    std::fs::write(&trusted_pem, trusted.cert.pem()).unwrap();
    std::fs::write(&stranger_pem, stranger.cert.pem()).unwrap();
    let url =
        |host: &str, query: &str| format!("postgres://gust@{host}:{}/tls?{query}", cluster.port());
    let open = |url: String| async move { Store::open_postgres(&url).await };

    let verified = format!("sslmode=verify-full&sslrootcert={}", trusted_pem.display());
    let store = open(url("localhost", &verified)).await.unwrap();
    store.ping().await.unwrap();
    assert_encrypted(&url("localhost", &verified)).await;

    let wrong_ca = format!("sslmode=verify-full&sslrootcert={}", stranger_pem.display());
    let err = format!("{:#}", open(url("localhost", &wrong_ca)).await.unwrap_err());
    assert!(err.contains("certificate"), "{err}");
    assert!(
        err.contains(&format!("localhost:{}/tls", cluster.port())),
        "{err}"
    );

    let err = format!("{:#}", open(url("127.0.0.1", &verified)).await.unwrap_err());
    assert!(err.contains("certificate") && err.contains("name"), "{err}");
    let chain_only = format!("sslmode=verify-ca&sslrootcert={}", trusted_pem.display());
    open(url("127.0.0.1", &chain_only))
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();

    open(url("127.0.0.1", "sslmode=require"))
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    open(url("127.0.0.1", "sslmode=prefer"))
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    open(url("127.0.0.1", "sslmode=disable"))
        .await
        .unwrap()
        .ping()
        .await
        .unwrap();
    let err = format!(
        "{:#}",
        open(url("127.0.0.1", "sslmode=bogus")).await.unwrap_err()
    );
    assert!(err.contains("unknown sslmode `bogus`"), "{err}");
}

/// Whether the server sees the connection made with `url` as encrypted (asked over it).
async fn assert_encrypted(url: &str) {
    let store = Store::open_postgres(url).await.unwrap();
    // The store answers only its own questions; `pg_stat_ssl` is read through a plain
    // connection, for the store's sessions.
    let plain = url
        .split('?')
        .next()
        .unwrap()
        .replace("localhost", "127.0.0.1");
    let (client, connection) =
        tokio_postgres::connect(&format!("{plain}?sslmode=disable"), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    store.ping().await.unwrap();
    let encrypted: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a ON a.pid = s.pid
             WHERE s.ssl AND a.application_name = 'gust'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted >= 1, "no encrypted session of the store");
}
