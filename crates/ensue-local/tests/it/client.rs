//! The real `delibera-ensue` client against this server, in both dialects:
//! the `Memory` port end to end, org registration and isolation, auth failures.

use std::collections::HashMap;
use std::sync::Arc;

use delibera_backoff::Backoff;
use delibera_ensue::{Dialect, EnsueClient, EnsueConfig, Error, Memory, register_org};
use delibera_ensue_local::LocalEnsue;
use tokio::task::JoinSet;

use crate::common::{start, stop};

const DIALECTS: [Dialect; 2] = [Dialect::Mcp, Dialect::Direct];

fn client(server: &LocalEnsue, api_key: &str, dialect: Dialect) -> EnsueClient {
    let config = EnsueConfig::new(api_key)
        .with_base_url(server.url())
        .unwrap()
        .with_dialect(dialect)
        .with_retry(Backoff::none());
    EnsueClient::new(config).unwrap()
}

#[tokio::test]
async fn every_memory_operation_in_both_dialects() {
    for dialect in DIALECTS {
        let server = start().await;
        let memory = client(&server, server.api_key().expose(), dialect);
        let status = "coordination/tasks/did:key:z6MkW1/status";

        assert_eq!(memory.get(status).await.unwrap(), None, "{dialect}");
        memory.create(status, "idle").await.unwrap();
        assert_eq!(memory.get(status).await.unwrap().as_deref(), Some("idle"));

        let again = memory.create(status, "pending").await.unwrap_err();
        assert!(again.is_already_exists(), "{dialect}: {again}");
        assert_eq!(memory.get(status).await.unwrap().as_deref(), Some("idle"));

        memory.update(status, "completed").await.unwrap();
        assert_eq!(
            memory.get(status).await.unwrap().as_deref(),
            Some("completed")
        );

        let missing = memory.update("coordination/nope", "x").await.unwrap_err();
        assert!(missing.is_not_found(), "{dialect}: {missing}");

        // Upsert of a missing key creates it, of a present key updates it.
        memory
            .upsert(
                "coordination/tasks/did:key:z6MkW1/result",
                "{\"vote\":\"approve\"}",
            )
            .await
            .unwrap();
        memory.upsert(status, "idle").await.unwrap();

        let keys: Vec<String> = vec![
            status.to_owned(),
            "coordination/tasks/did:key:z6MkW1/result".to_owned(),
            "coordination/absent".to_owned(),
        ];
        let found = memory.get_many(&keys).await.unwrap();
        let expected: HashMap<String, String> = [
            (status.to_owned(), "idle".to_owned()),
            (
                "coordination/tasks/did:key:z6MkW1/result".to_owned(),
                "{\"vote\":\"approve\"}".to_owned(),
            ),
        ]
        .into();
        assert_eq!(found, expected, "{dialect}");

        assert_eq!(
            memory.list_keys("coordination/tasks/").await.unwrap(),
            [
                "coordination/tasks/did:key:z6MkW1/result",
                "coordination/tasks/did:key:z6MkW1/status",
            ],
            "{dialect}"
        );

        memory.delete(status).await.unwrap();
        assert_eq!(memory.get(status).await.unwrap(), None);
        // Deleting a missing key is fine for the port.
        memory.delete(status).await.unwrap();
        stop(server).await;
    }
}

#[tokio::test]
async fn list_keys_pages_and_takes_prefixes_literally() {
    for dialect in DIALECTS {
        let server = start().await;
        let memory = client(&server, server.api_key().expose(), dialect);
        // 230 keys: the server answers at most 100 per call, so both dialects page.
        let mut expected = Vec::new();
        for i in 0..230 {
            let key = format!("agent/w_{i:03}/endpoint");
            expected.push(key.clone());
        }
        let items: Vec<(String, String)> = expected
            .iter()
            .map(|k| (k.clone(), "v".to_owned()))
            .collect();
        for (key, value) in &items {
            memory.create(key, value).await.unwrap();
        }
        // Keys a LIKE wildcard would also match: `_` must be taken literally.
        memory.create("agent/wX000/endpoint", "v").await.unwrap();
        memory.create("agent/w%/endpoint", "v").await.unwrap();

        let listed = memory.list_keys("agent/w_").await.unwrap();
        assert_eq!(listed, expected, "{dialect}");
        let listed = memory.list_keys("agent/w%").await.unwrap();
        assert_eq!(listed, ["agent/w%/endpoint"], "{dialect}");
        stop(server).await;
    }
}

#[tokio::test]
async fn get_many_beyond_one_batch() {
    for dialect in DIALECTS {
        let server = start().await;
        let memory = client(&server, server.api_key().expose(), dialect);
        let keys: Vec<String> = (0..150).map(|i| format!("batch/{i}")).collect();
        for key in keys.iter().step_by(2) {
            memory
                .create(key, &format!("value of {key}"))
                .await
                .unwrap();
        }
        let found = memory.get_many(&keys).await.unwrap();
        assert_eq!(found.len(), 75, "{dialect}");
        assert_eq!(found["batch/148"], "value of batch/148");
        assert!(!found.contains_key("batch/149"));
        stop(server).await;
    }
}

#[tokio::test]
async fn create_many_and_delete_many_beyond_one_batch_answer_per_item() {
    for dialect in DIALECTS {
        let server = start().await;
        let memory = client(&server, server.api_key().expose(), dialect);
        memory.create("many/7", "already there").await.unwrap();
        let items: Vec<(String, String)> = (0..150)
            .map(|i| (format!("many/{i}"), format!("value {i}")))
            .collect();
        let outcomes = memory.create_many(&items).await.unwrap();
        assert_eq!(outcomes.len(), 150, "{dialect}");
        for (index, outcome) in outcomes.iter().enumerate() {
            if index == 7 {
                let error = outcome.as_ref().unwrap_err();
                assert!(error.is_already_exists(), "{dialect}: {error}");
            } else {
                assert!(outcome.is_ok(), "{dialect}: many/{index}: {outcome:?}");
            }
        }
        let keys: Vec<String> = items.iter().map(|(key, _)| key.clone()).collect();
        let found = memory.get_many(&keys).await.unwrap();
        assert_eq!(found["many/7"], "already there", "{dialect}");
        assert_eq!(found["many/149"], "value 149", "{dialect}");

        // A batch in which every item is refused still answers per item.
        let again = memory.create_many(&items[..3]).await.unwrap();
        assert!(
            again
                .iter()
                .all(|outcome| outcome.as_ref().is_err_and(Error::is_already_exists)),
            "{dialect}: {again:?}"
        );

        // Missing keys among the deleted ones are not an error.
        let mut doomed = keys.clone();
        doomed.push("many/never-there".to_owned());
        memory.delete_many(&doomed).await.unwrap();
        assert!(
            memory.get_many(&keys).await.unwrap().is_empty(),
            "{dialect}"
        );
        stop(server).await;
    }
}

#[tokio::test]
async fn registered_orgs_are_isolated() {
    for dialect in DIALECTS {
        let server = start().await;
        let registration = register_org(server.url(), "delibera-coord-test")
            .await
            .unwrap();
        assert!(registration.claim_url.starts_with(server.url()));
        let org_a = client(&server, server.api_key().expose(), dialect);
        let org_b = client(&server, registration.api_key.expose_secret(), dialect);

        org_a
            .create("coordination/coordinator/status", "tallying")
            .await
            .unwrap();
        assert_eq!(
            org_b.get("coordination/coordinator/status").await.unwrap(),
            None
        );
        assert_eq!(
            org_b.list_keys("coordination/").await.unwrap(),
            Vec::<String>::new()
        );
        let update = org_b
            .update("coordination/coordinator/status", "idle")
            .await
            .unwrap_err();
        assert!(update.is_not_found(), "{dialect}: {update}");

        org_b
            .create("coordination/coordinator/status", "idle")
            .await
            .unwrap();
        org_b
            .delete("coordination/coordinator/status")
            .await
            .unwrap();
        assert_eq!(
            org_a
                .get("coordination/coordinator/status")
                .await
                .unwrap()
                .as_deref(),
            Some("tallying"),
            "{dialect}"
        );

        let taken = register_org(server.url(), "delibera-coord-test")
            .await
            .unwrap_err();
        assert!(matches!(taken, Error::OrgNameTaken { .. }), "{taken}");
        stop(server).await;
    }
}

#[tokio::test]
async fn a_bad_key_is_unauthorized_for_every_operation() {
    for dialect in DIALECTS {
        let server = start().await;
        let memory = client(&server, "lmn_not_a_key", dialect);
        let keys = ["k".to_owned()];
        let failures = [
            memory.create("k", "v").await.unwrap_err(),
            memory.update("k", "v").await.unwrap_err(),
            memory.upsert("k", "v").await.unwrap_err(),
            memory.get("k").await.unwrap_err(),
            memory.get_many(&keys).await.unwrap_err(),
            memory.list_keys("").await.unwrap_err(),
            memory.delete("k").await.unwrap_err(),
        ];
        for error in failures {
            assert!(
                matches!(error, Error::Unauthorized { status: 401, .. }),
                "{dialect}: {error}"
            );
            assert!(!error.is_retryable());
        }
        stop(server).await;
    }
}

#[tokio::test]
async fn racing_creates_through_the_client_have_one_winner() {
    for dialect in DIALECTS {
        let server = start().await;
        let memory = Arc::new(client(&server, server.api_key().expose(), dialect));
        let mut tasks = JoinSet::new();
        for task in 0..32 {
            let memory = Arc::clone(&memory);
            tasks.spawn(async move { memory.create("race/key", &format!("t{task}")).await });
        }
        let mut wins = 0;
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                Ok(()) => wins += 1,
                Err(error) => assert!(error.is_already_exists(), "{dialect}: {error}"),
            }
        }
        assert_eq!(wins, 1, "{dialect}");

        let mut tasks = JoinSet::new();
        for task in 0..32 {
            let memory = Arc::clone(&memory);
            tasks.spawn(async move {
                let key = format!("upsert/{task:02}");
                memory.upsert(&key, "first").await?;
                memory.upsert(&key, &format!("v{task}")).await
            });
        }
        while let Some(joined) = tasks.join_next().await {
            joined.unwrap().unwrap();
        }
        let keys = memory.list_keys("upsert/").await.unwrap();
        assert_eq!(keys.len(), 32, "{dialect}");
        let values = memory.get_many(&keys).await.unwrap();
        for task in 0..32 {
            assert_eq!(values[&format!("upsert/{task:02}")], format!("v{task}"));
        }
        stop(server).await;
    }
}
