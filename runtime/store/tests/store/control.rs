//! Agents, versions, deployments, keys, secrets and settings, on both backends.

use gust_model::{AgentConfig, KeyRecord};
use gust_store::{DeployKey, DraftBase, RollbackPlan, StoreError, VersionDeletion, draft_tag};

use crate::support::both;

both! {
    async fn versions_are_numbered_per_agent_and_never_reused(db: Store) {
        let (v1, new) = db.add_version("a", "sha256:1", 10, 1).await.unwrap();
        assert!(new);
        assert_eq!(v1.version, 1);
        let (again, new) = db.add_version("a", "sha256:1", 10, 2).await.unwrap();
        assert!(!new);
        assert_eq!(again.version, 1);
        let (v2, _) = db.add_version("a", "sha256:2", 10, 3).await.unwrap();
        assert_eq!(v2.version, 2);
        assert_eq!(db.add_version("b", "sha256:2", 10, 3).await.unwrap().0.version, 1);
        assert_eq!(
            db.delete_version("a", 2).await.unwrap(),
            VersionDeletion::Deleted { orphaned: None },
            "agent b still uses the bytes"
        );
        assert_eq!(db.add_version("a", "sha256:3", 10, 4).await.unwrap().0.version, 3);
        assert_eq!(db.latest_version("a").await.unwrap().unwrap().version, 3);
        assert_eq!(
            db.version_by_digest("b", "sha256:2").await.unwrap().unwrap().version,
            1
        );
        assert!(db.version("a", 2).await.unwrap().is_none());
        let digests = db.referenced_digests().await.unwrap();
        assert_eq!(digests.len(), 3, "{digests:?}");
    }
}

both! {
    async fn rollback_walks_back_and_skips_rolled_back_deployments(db: Store) {
        for (i, d) in ["sha256:1", "sha256:2", "sha256:3"].iter().enumerate() {
            db.add_version("a", d, 1, i as i64).await.unwrap();
        }
        let mut cfg = AgentConfig::default();
        for v in 1..=3 {
            cfg.config.insert("v".into(), v.to_string());
            db.deploy("a", v, &cfg, 10 + i64::from(v), None).await.unwrap();
        }
        for (expect_from, expect_to) in [(3, 2), (2, 1)] {
            step(&db, expect_from, expect_to).await;
        }
        assert!(matches!(
            db.plan_rollback("a", None).await.unwrap(),
            RollbackPlan::NothingToRollBackTo
        ));
        // A new deployment after rollbacks goes back to 1, skipping the rolled-back 2 and 3.
        db.deploy("a", 3, &cfg, 200, None).await.unwrap();
        step(&db, 4, 1).await;
        assert_eq!(db.live_deployments().await.unwrap()[0].deployment, 1);
        assert!(matches!(
            db.plan_rollback("nope", None).await.unwrap(),
            RollbackPlan::NoAgent
        ));
        assert!(matches!(
            db.rollback("a", 4, 1, 0).await,
            Err(StoreError::Conflict(_))
        ));
        let agent = db.agent("a").await.unwrap().unwrap();
        assert_eq!(agent.live.unwrap().deployment, 1);
        assert_eq!((agent.versions.len(), agent.deployments.len()), (3, 4));
        assert_eq!(agent.deployments[3].rolled_back_at, Some(100));
    }
}

async fn step(db: &gust_store::Store, expect_from: u32, expect_to: u32) {
    match db.plan_rollback("a", None).await.unwrap() {
        RollbackPlan::To { from, to } => {
            assert_eq!((from, to.deployment), (expect_from, expect_to));
            assert_eq!(
                to.config.config["v"],
                to.version.to_string(),
                "frozen config comes back"
            );
            db.rollback("a", from, to.deployment, 100).await.unwrap();
        }
        other => panic!("expected a rollback, got {other:?}"),
    }
}

both! {
    /// A rollback that names its target is safe to repeat: the second time the target is
    /// live already, and nothing changes.
    async fn named_rollbacks_go_to_their_target_once(db: Store) {
        for v in 1..=3 {
            db.add_version("a", &format!("sha256:{v}"), 1, 0).await.unwrap();
            db.deploy("a", v, &AgentConfig::default(), i64::from(v), None)
                .await
                .unwrap();
        }
        let RollbackPlan::To { from, to } = db.plan_rollback("a", Some(1)).await.unwrap() else {
            panic!("a rollback to 1");
        };
        assert_eq!((from, to.deployment), (3, 1));
        db.rollback("a", from, to.deployment, 10).await.unwrap();
        assert!(matches!(
            db.plan_rollback("a", Some(1)).await.unwrap(),
            RollbackPlan::AlreadyLive(live) if live.deployment == 1
        ));
        assert!(matches!(
            db.plan_rollback("a", Some(9)).await.unwrap(),
            RollbackPlan::NoSuchDeployment
        ));
        // Back to 3 (rolled back earlier) is allowed by name; to 2 once its version is gone,
        // not.
        assert!(matches!(
            db.plan_rollback("a", Some(3)).await.unwrap(),
            RollbackPlan::To { from: 1, .. }
        ));
        assert_eq!(
            db.delete_version("a", 2).await.unwrap(),
            VersionDeletion::Deleted {
                orphaned: Some("sha256:2".into())
            }
        );
        assert!(matches!(
            db.plan_rollback("a", Some(2)).await.unwrap(),
            RollbackPlan::VersionDeleted
        ));
    }
}

both! {
    async fn deploys_are_found_by_their_idempotency_key(db: Store) {
        db.add_version("a", "sha256:1", 1, 0).await.unwrap();
        let key = DeployKey {
            key: "release-7".into(),
            request_hash: "h1".into(),
        };
        let made = db
            .deploy("a", 1, &AgentConfig::default(), 100, Some(key))
            .await
            .unwrap();
        let (found, hash) = db
            .deployment_by_key("a", "release-7", 50)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((found.deployment, hash.as_str()), (made.deployment, "h1"));
        assert!(
            db.deployment_by_key("a", "release-7", 101).await.unwrap().is_none(),
            "too old"
        );
        assert!(db.deployment_by_key("a", "other", 0).await.unwrap().is_none());
        assert!(db.deployment_by_key("b", "release-7", 0).await.unwrap().is_none());
        assert_eq!(
            db.deployment("a", made.deployment).await.unwrap().unwrap(),
            made
        );
        assert!(matches!(
            db.deploy("a", 9, &AgentConfig::default(), 100, None).await,
            Err(StoreError::NotFound(_))
        ));
    }
}

both! {
    async fn live_version_cannot_be_deleted_and_agent_delete_reports_orphans(db: Store) {
        db.add_version("a", "sha256:1", 1, 0).await.unwrap();
        db.add_version("a", "sha256:2", 1, 0).await.unwrap();
        db.deploy("a", 1, &AgentConfig::default(), 0, None).await.unwrap();
        assert_eq!(db.delete_version("a", 1).await.unwrap(), VersionDeletion::Live);
        assert_eq!(db.delete_version("a", 9).await.unwrap(), VersionDeletion::NotFound);
        assert_eq!(
            db.delete_version("a", 2).await.unwrap(),
            VersionDeletion::Deleted {
                orphaned: Some("sha256:2".into())
            }
        );
        assert_eq!(
            db.delete_agent("a").await.unwrap(),
            Some(vec!["sha256:1".to_owned()])
        );
        assert_eq!(db.delete_agent("a").await.unwrap(), None);
        assert!(db.agent("a").await.unwrap().is_none());
    }
}

both! {
    async fn drafts_create_agents_and_are_listed(db: Store) {
        let mut draft = AgentConfig::default();
        draft.config.insert("k".into(), "v".into());
        assert!(db.put_draft("a", &draft, 5, DraftBase::Any).await.unwrap());
        assert_eq!(db.draft("a").await.unwrap(), Some(draft.clone()));
        assert_eq!(db.draft("b").await.unwrap(), None);
        db.add_version("a", "sha256:1", 1, 6).await.unwrap();
        db.deploy("a", 1, &AgentConfig::default(), 7, None).await.unwrap();
        let agents = db.list_agents().await.unwrap();
        assert_eq!(agents.len(), 1);
        let a = &agents[0];
        assert_eq!((a.name.as_str(), a.created_at, a.live), ("a", 5, Some((1, 1))));
        assert_eq!((a.versions, a.newest_version, a.deployed_at), (1, Some(1), Some(7)));
        assert!(a.draft_pending, "the draft differs from what is live");
    }
}

both! {
    async fn a_draft_is_written_only_over_the_draft_its_writer_read(db: Store) {
        let mut first = AgentConfig::default();
        first.config.insert("model".into(), "small".into());
        let tag = |d: &AgentConfig| DraftBase::OneOf(vec![draft_tag(d)]);
        // Nothing to match yet: only a writer that expects no agent creates it.
        assert!(!db.put_draft("a", &first, 1, tag(&first)).await.unwrap());
        assert!(!db.put_draft("a", &first, 1, DraftBase::Present).await.unwrap());
        assert_eq!(db.draft("a").await.unwrap(), None);
        assert!(db.put_draft("a", &first, 1, DraftBase::Absent).await.unwrap());
        assert!(!db.put_draft("a", &first, 1, DraftBase::Absent).await.unwrap());

        // Two editors read the same draft; the first write wins, the second is refused
        // and leaves the first one's change in place.
        let read = tag(&first);
        let mut one = first.clone();
        one.config.insert("temperature".into(), "0.2".into());
        let mut two = first.clone();
        two.config.insert("region".into(), "eu".into());
        assert!(db.put_draft("a", &one, 2, read.clone()).await.unwrap());
        assert!(!db.put_draft("a", &two, 3, read).await.unwrap());
        assert_eq!(db.draft("a").await.unwrap(), Some(one.clone()));
        // Read again, the second editor's change goes in over the first one's.
        two.config.insert("temperature".into(), "0.2".into());
        assert!(db.put_draft("a", &two, 3, DraftBase::OneOf(vec!["stale".into(), draft_tag(&one)])).await.unwrap());
        assert_eq!(db.draft("a").await.unwrap(), Some(two.clone()));
        assert!(db.put_draft("a", &first, 4, DraftBase::Present).await.unwrap());
        assert!(db.put_draft("a", &two, 5, DraftBase::Any).await.unwrap());
        assert_eq!(db.draft("a").await.unwrap(), Some(two.clone()));

        // The tag leaves the write-only token out; a writer that read the token (to keep
        // it) names the whole draft it read, and a token changed since refuses its write.
        let with_token = |token: &str| {
            let mut d = two.clone();
            d.push = Some(gust_model::PushConfig {
                url: "https://app.example/hook".into(),
                access_token: token.into(),
                secret: None,
            });
            d
        };
        assert!(db.put_draft("a", &with_token("t1"), 6, DraftBase::Any).await.unwrap());
        assert_eq!(draft_tag(&with_token("t1")), draft_tag(&with_token("t2")));
        assert!(db.put_draft("a", &with_token("t2"), 7, tag(&with_token("t1"))).await.unwrap());
        let read_t1 = DraftBase::Exactly(Box::new(with_token("t1")));
        assert!(!db.put_draft("a", &with_token("t1"), 8, read_t1).await.unwrap());
        assert_eq!(db.draft("a").await.unwrap(), Some(with_token("t2")));
    }
}

both! {
    async fn keys_are_created_touched_and_deleted(db: Store) {
        let key = |id: &str, agent: &str| KeyRecord {
            id: id.into(),
            agent: agent.into(),
            name: "ci".into(),
            hash: format!("hash-{id}"),
            created_at: 1,
            last_used_at: None,
            rate_limit: None,
        };
        assert!(matches!(
            db.create_key(&key("k1", "a")).await,
            Err(StoreError::NotFound(_))
        ));
        db.put_draft("a", &AgentConfig::default(), 0, DraftBase::Any)
            .await
            .unwrap();
        db.create_key(&key("k1", "a")).await.unwrap();
        db.create_key(&key("k2", "a")).await.unwrap();
        db.touch_keys(vec![("k1".into(), 50)]).await.unwrap();
        let keys = db.list_keys("a").await.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].last_used_at, Some(50));
        assert_eq!(db.all_keys().await.unwrap().len(), 2);
        assert!(db.delete_key("a", "k1").await.unwrap());
        assert!(!db.delete_key("a", "k1").await.unwrap());
        assert!(!db.delete_key("b", "k2").await.unwrap(), "another agent's key");
        db.delete_agent("a").await.unwrap();
        assert!(db.all_keys().await.unwrap().is_empty());
    }
}

both! {
    async fn an_agents_first_push_secret_is_made_once(db: Store) {
        assert!(!db.first_push_secret("a", "whsec_0").await.unwrap(), "no agent");
        db.put_draft("a", &AgentConfig::default(), 0, DraftBase::Any)
            .await
            .unwrap();
        assert!(db.first_push_secret("a", "whsec_1").await.unwrap());
        // A second host turning push on a moment later keeps the first one's secret.
        assert!(!db.first_push_secret("a", "whsec_2").await.unwrap());
        let secrets = db.push_secrets("a").await.unwrap().unwrap();
        assert_eq!((secrets.current.as_str(), secrets.previous), ("whsec_1", None));
    }
}

both! {
    async fn push_secrets_rotate(db: Store) {
        assert!(matches!(
            db.set_push_secret("a", "whsec_1", 10).await,
            Err(StoreError::NotFound(_))
        ));
        db.put_draft("a", &AgentConfig::default(), 0, DraftBase::Any)
            .await
            .unwrap();
        assert_eq!(db.push_secrets("a").await.unwrap(), None);
        db.set_push_secret("a", "whsec_1", 10).await.unwrap();
        let first = db.push_secrets("a").await.unwrap().unwrap();
        assert_eq!((first.current.as_str(), first.previous), ("whsec_1", None));
        db.set_push_secret("a", "whsec_2", 20).await.unwrap();
        let second = db.push_secrets("a").await.unwrap().unwrap();
        assert_eq!(second.current, "whsec_2");
        assert_eq!(second.previous, Some(("whsec_1".into(), 20)));
    }
}

both! {
    async fn the_first_setting_stored_wins(db: Store) {
        assert_eq!(db.setting("admin").await.unwrap(), None);
        assert_eq!(db.put_setting_if_absent("admin", "one").await.unwrap(), "one");
        assert_eq!(db.put_setting_if_absent("admin", "two").await.unwrap(), "one");
        db.set_setting("admin", "three").await.unwrap();
        assert_eq!(db.setting("admin").await.unwrap().as_deref(), Some("three"));
    }
}

both! {
    /// PostgreSQL keeps component bytes for every host, and drops them with the last version
    /// that uses them; SQLite leaves them to the data folder.
    async fn component_bytes_are_kept_where_the_backend_keeps_them(db: Store) {
        db.add_version("a", "sha256:1", 3, 0).await.unwrap();
        db.add_version("b", "sha256:1", 3, 0).await.unwrap();
        db.add_version("a", "sha256:2", 3, 0).await.unwrap();
        db.put_component("sha256:1", b"one").await.unwrap();
        db.put_component("sha256:1", b"one").await.unwrap();
        db.put_component("sha256:2", b"two").await.unwrap();
        if !db.shared() {
            assert_eq!(db.component("sha256:1").await.unwrap(), None);
            assert!(!db.has_component("sha256:1").await.unwrap());
            return;
        }
        assert_eq!(db.component("sha256:1").await.unwrap().as_deref(), Some(&b"one"[..]));
        assert!(db.has_component("sha256:2").await.unwrap());
        db.delete_version("a", 2).await.unwrap();
        assert!(!db.has_component("sha256:2").await.unwrap(), "its last version is gone");
        db.delete_agent("a").await.unwrap();
        assert!(db.has_component("sha256:1").await.unwrap(), "agent b still uses it");
        assert_eq!(db.delete_agent("b").await.unwrap(), Some(vec!["sha256:1".to_owned()]));
        assert_eq!(db.component("sha256:1").await.unwrap(), None);
    }
}
