//! Durability across restarts and safety under concurrent writers, on a real
//! SQLite file.

use std::sync::Arc;

use delibera_ensue_local::{ApiKey, Config, DATABASE_FILE, LocalEnsue};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::common::{create, get, stop, tool, upsert};

const KEYS: usize = 250;

fn key_name(i: usize) -> String {
    format!("coordination/proposals/p{}/workers/w{i:03}/result", i % 7)
}

async fn start_in(dir: &std::path::Path, key: &ApiKey) -> LocalEnsue {
    LocalEnsue::start(
        Config::default()
            .with_data_dir(dir)
            .with_bootstrap_key(key.clone()),
    )
    .await
    .unwrap()
}

#[cfg(unix)]
#[tokio::test]
async fn the_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("ensue");
    let key = ApiKey::new("lmn_permissions_test").unwrap();
    let server = start_in(&dir, &key).await;
    create(&server, key.expose(), "in-the-clear", "value").await;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(DATABASE_FILE)), 0o600);
    let wal = dir.join(format!("{DATABASE_FILE}-wal"));
    assert_eq!(
        mode(&wal),
        0o600,
        "SQLite gives its WAL the database's mode"
    );
    server.stop().await.unwrap();

    // What an earlier release left readable is tightened on start.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let database = dir.join(DATABASE_FILE);
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = start_in(&dir, &key).await;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&database), 0o600);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn acknowledged_writes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let key = ApiKey::new("lmn_durability_test").unwrap();

    let server = start_in(dir.path(), &key).await;
    let api_key = key.expose();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|&i| json!({ "key_name": key_name(i), "value": format!("v{i}"), "description": "d" }))
            .collect();
        let created = tool(&server, api_key, "create_memory", json!({ "items": items })).await;
        assert_eq!(created["isError"], false);
    }
    // Updates and deletes must survive too.
    upsert(&server, api_key, &key_name(0), "updated").await;
    tool(
        &server,
        api_key,
        "delete_memory",
        json!({ "key_names": [key_name(1)] }),
    )
    .await;
    let other_org = server.store().register_org("other").await.unwrap();
    create(&server, other_org.expose(), "theirs", "B").await;
    stop(server).await;
    assert!(dir.path().join(DATABASE_FILE).exists());

    let server = start_in(dir.path(), &key).await;
    assert_eq!(
        get(&server, api_key, &key_name(0)).await.as_deref(),
        Some("updated")
    );
    assert_eq!(get(&server, api_key, &key_name(1)).await, None);
    for i in 2..KEYS {
        let names: Vec<String> = vec![key_name(i)];
        let read = tool(
            &server,
            api_key,
            "get_memory",
            json!({ "key_names": names }),
        )
        .await;
        assert_eq!(
            read["structuredContent"]["results"][0]["value"],
            format!("v{i}"),
            "{}",
            key_name(i)
        );
    }
    let listed = tool(
        &server,
        api_key,
        "list_keys",
        json!({ "prefix": "coordination/" }),
    )
    .await;
    assert_eq!(listed["structuredContent"]["total"], KEYS - 1);
    // Registered organisations and their keys persist as well.
    assert_eq!(
        get(&server, other_org.expose(), "theirs").await.as_deref(),
        Some("B")
    );
    stop(server).await;
}

#[tokio::test]
async fn thirty_two_racing_creates_have_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(start_in(dir.path(), &ApiKey::generate()).await);
    let mut tasks = JoinSet::new();
    for task in 0..32 {
        let server = Arc::clone(&server);
        tasks.spawn(async move {
            let api_key = server.api_key().expose().to_owned();
            let result = create(
                &server,
                &api_key,
                "coordination/coordinator/status",
                &format!("t{task}"),
            )
            .await;
            (task, result)
        });
    }
    let mut winners = Vec::new();
    let mut losers = 0;
    while let Some(joined) = tasks.join_next().await {
        let (task, result) = joined.unwrap();
        let item = &result["structuredContent"]["results"][0];
        match item["status"].as_str() {
            Some("success") => winners.push(task),
            Some("already_exists") => {
                assert_eq!(result["isError"], true);
                assert_eq!(
                    result["content"][0]["text"],
                    "key already exists: coordination/coordinator/status"
                );
                losers += 1;
            }
            other => panic!("unexpected status {other:?}: {result}"),
        }
    }
    assert_eq!(winners.len(), 1);
    assert_eq!(losers, 31);
    let server = Arc::into_inner(server).unwrap();
    let stored = get(
        &server,
        server.api_key().expose(),
        "coordination/coordinator/status",
    )
    .await;
    assert_eq!(stored, Some(format!("t{}", winners[0])));
    stop(server).await;
}

#[tokio::test]
async fn thirty_two_concurrent_upserters_lose_nothing() {
    const ROUNDS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(start_in(dir.path(), &ApiKey::generate()).await);
    let mut tasks = JoinSet::new();
    for task in 0..32 {
        let server = Arc::clone(&server);
        tasks.spawn(async move {
            let api_key = server.api_key().expose().to_owned();
            // Each key is written twice: a create (via not-found) then an update.
            for round in 0..ROUNDS {
                let key = format!("coordination/tasks/w{task:02}/r{round}");
                upsert(&server, &api_key, &key, "first").await;
                upsert(&server, &api_key, &key, &format!("{task}/{round}")).await;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    let server = Arc::into_inner(server).unwrap();
    let api_key = server.api_key().expose().to_owned();
    let mut expected = Vec::new();
    for task in 0..32 {
        for round in 0..ROUNDS {
            expected.push((
                format!("coordination/tasks/w{task:02}/r{round}"),
                format!("{task}/{round}"),
            ));
        }
    }
    for chunk in expected.chunks(100) {
        let names: Vec<&str> = chunk.iter().map(|(key, _)| key.as_str()).collect();
        let read = tool(
            &server,
            &api_key,
            "get_memory",
            json!({ "key_names": names }),
        )
        .await;
        let results = read["structuredContent"]["results"].as_array().unwrap();
        for ((key, value), item) in chunk.iter().zip(results) {
            assert_eq!(item["key_name"], key.as_str());
            assert_eq!(item["value"], value.as_str(), "{key}");
        }
    }
    let listed = tool(
        &server,
        &api_key,
        "list_keys",
        json!({ "prefix": "coordination/tasks/" }),
    )
    .await;
    assert_eq!(listed["structuredContent"]["total"], 32 * ROUNDS);
    stop(server).await;
}

#[tokio::test]
async fn two_stores_on_one_file_still_create_atomically() {
    // Two servers on the same data dir (two processes' worth of connections):
    // the primary key, not the in-process mutex, decides the race.
    let dir = tempfile::tempdir().unwrap();
    let key = ApiKey::generate();
    let first = Arc::new(start_in(dir.path(), &key).await);
    let second = Arc::new(start_in(dir.path(), &key).await);
    let mut tasks = JoinSet::new();
    for task in 0..32 {
        let server = Arc::clone(if task % 2 == 0 { &first } else { &second });
        tasks.spawn(async move {
            let api_key = server.api_key().expose().to_owned();
            create(&server, &api_key, "one/key", &format!("t{task}")).await["isError"] == false
        });
    }
    let mut wins = 0;
    while let Some(joined) = tasks.join_next().await {
        if joined.unwrap() {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
    stop(Arc::into_inner(first).unwrap()).await;
    stop(Arc::into_inner(second).unwrap()).await;
}

#[tokio::test]
async fn registering_again_with_the_same_key_adopts_the_org_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = ApiKey::new("lmn_adoption_test").unwrap();
    let chosen = ApiKey::generate();

    let server = start_in(dir.path(), &bootstrap).await;
    let store = server.store();
    assert!(
        store
            .register_org_with_key("team-a", &chosen)
            .await
            .unwrap()
    );
    create(&server, chosen.expose(), "note", "kept").await;
    // The caller lost the first answer and registers again: same org, data kept.
    assert!(
        !store
            .register_org_with_key("team-a", &chosen)
            .await
            .unwrap()
    );
    server.stop().await.unwrap();

    let server = start_in(dir.path(), &bootstrap).await;
    let store = server.store();
    assert!(
        !store
            .register_org_with_key("team-a", &chosen)
            .await
            .unwrap()
    );
    assert_eq!(
        get(&server, chosen.expose(), "note").await.as_deref(),
        Some("kept")
    );
    // A key the org does not answer to cannot take it over.
    let stranger = ApiKey::generate();
    assert!(matches!(
        store.register_org_with_key("team-a", &stranger).await,
        Err(delibera_ensue_local::Error::OrgNameTaken { name }) if name == "team-a"
    ));
    assert_eq!(
        store.org_names().await.unwrap(),
        [delibera_ensue_local::BOOTSTRAP_ORG, "team-a"]
    );
    server.stop().await.unwrap();
}
