//! The run queue's writes, on both backends.

use gust_model::{DeliveryStatus, RunOutcome, RunStatus};
use gust_store::queue::{RunWrite, WriteOutcome};

use crate::support::{apply, both, deployed, new_run, pushing, start};

fn succeed(id: &str, now: i64) -> RunWrite {
    RunWrite::Finish {
        id: id.into(),
        attempt: 1,
        now,
        outcome: RunOutcome::Succeeded {
            content_type: "text/plain".into(),
            output: b"ok".to_vec(),
        },
        logs: vec![],
        outbound: vec![],
    }
}

both! {
    async fn a_run_goes_from_queued_to_succeeded_once(db: Store) {
        deployed(&db).await;
        assert_eq!(apply(&db, new_run("r1", 10, None)).await, WriteOutcome::Inserted);
        assert!(matches!(
            apply(&db, start("r1", 20, 99)).await,
            WriteOutcome::Started(s) if s.attempt == 1 && s.input == b"{}"
        ));
        assert_eq!(
            apply(&db, start("r1", 20, 99)).await,
            WriteOutcome::NotStarted(Some(RunStatus::Running))
        );
        assert_eq!(
            apply(&db, RunWrite::Progress { id: "r1".into(), attempt: 1, fraction: 0.5, message: "half".into() }).await,
            WriteOutcome::Done
        );
        assert_eq!(
            db.run("a", "r1").await.unwrap().unwrap().progress,
            Some((0.5, "half".into()))
        );
        assert_eq!(
            apply(&db, succeed("r1", 30)).await,
            WriteOutcome::Finished { delivery: false }
        );
        assert_eq!(apply(&db, succeed("r1", 31)).await, WriteOutcome::NotRunning, "a run ends once");
        let run = db.run("a", "r1").await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Succeeded);
        assert_eq!(run.output, Some(("text/plain".into(), b"ok".to_vec())));
        assert!(
            db.run("other-agent", "r1").await.unwrap().is_none(),
            "runs are scoped by agent"
        );
        assert_eq!(
            db.run_input("a", "r1").await.unwrap(),
            Some((b"{}".to_vec(), "application/json".into()))
        );
        assert_eq!(apply(&db, start("nope", 20, 99)).await, WriteOutcome::NotStarted(None));
    }
}

both! {
    async fn idempotency_keys_replay_conflict_and_expire_after_a_day(db: Store) {
        deployed(&db).await;
        assert_eq!(
            apply(&db, new_run("r1", 10, Some(("k", "h1")))).await,
            WriteOutcome::Inserted
        );
        assert_eq!(
            apply(&db, new_run("r2", 20, Some(("k", "h1")))).await,
            WriteOutcome::Replayed { id: "r1".into() }
        );
        assert_eq!(
            apply(&db, new_run("r3", 30, Some(("k", "h2")))).await,
            WriteOutcome::IdempotencyConflict
        );
        let day = 24 * 3600 * 1000;
        assert_eq!(
            apply(&db, new_run("r4", 11 + day, Some(("k", "h2")))).await,
            WriteOutcome::Inserted
        );
        assert_eq!(
            apply(&db, new_run("r5", 12 + day, Some(("k", "h2")))).await,
            WriteOutcome::Replayed { id: "r4".into() }
        );
    }
}

both! {
    /// A batch is one transaction whose writes succeed or fail alone, with one outcome each,
    /// in order.
    async fn a_batch_answers_each_write(db: Store) {
        deployed(&db).await;
        let writes = vec![
            new_run("r1", 10, None),
            start("r1", 11, 99),
            new_run("r2", 10, Some(("k", "h"))),
            new_run("r3", 10, Some(("k", "h"))),
            RunWrite::Cancel { agent: "a".into(), id: "r2".into(), now: 12 },
        ];
        let (back, applied) = db.apply_run_writes(writes).await;
        assert_eq!(back.len(), 5, "the writes come back");
        let outcomes: Vec<WriteOutcome> =
            applied.unwrap().into_iter().map(Result::unwrap).collect();
        assert!(matches!(outcomes[1], WriteOutcome::Started(_)));
        assert_eq!(outcomes[3], WriteOutcome::Replayed { id: "r2".into() });
        assert_eq!(
            outcomes[4],
            WriteOutcome::Cancelled { was_running: false, delivery: false }
        );
        let active = db.active_runs().await.unwrap();
        assert_eq!((active.len(), active[0].running, active[0].queued), (1, 1, 0));
    }
}

both! {
    async fn recovery_requeues_or_fails_runs_that_were_running(db: Store) {
        deployed(&db).await;
        for id in ["r1", "r2", "r3"] {
            apply(&db, new_run(id, 10, None)).await;
        }
        // Leases end at 20: by 21 they lapsed, on either backend.
        for _ in 0..3 {
            // r1 is started three times (two crashes), r2 once; r3 stays queued.
            apply(&db, start("r1", 20, 20)).await;
            db.recover_runs(21, 99).await.unwrap();
        }
        apply(&db, start("r1", 20, 20)).await;
        apply(&db, start("r2", 20, 20)).await;
        let recovered = db.recover_runs(30, 3).await.unwrap();
        assert_eq!((recovered.lost, recovered.requeued), (1, 1));
        assert_eq!(
            recovered.queued,
            [("r2".to_owned(), "a".to_owned()), ("r3".to_owned(), "a".to_owned())]
        );
        assert_eq!(db.queued_runs().await.unwrap(), recovered.queued);
        let lost = db.run("a", "r1").await.unwrap().unwrap();
        assert_eq!((lost.status, lost.attempts), (RunStatus::Failed, 4));
        assert_eq!(lost.error.unwrap().0, "lost");
    }
}

both! {
    async fn expiry_cancel_and_purge(db: Store) {
        deployed(&db).await;
        apply(&db, new_run("r1", 10, None)).await;
        apply(&db, new_run("r2", 10, None)).await;
        assert_eq!(
            apply(&db, RunWrite::Cancel { agent: "a".into(), id: "r2".into(), now: 20 }).await,
            WriteOutcome::Cancelled { was_running: false, delivery: false }
        );
        assert_eq!(
            apply(&db, RunWrite::Cancel { agent: "a".into(), id: "r2".into(), now: 21 }).await,
            WriteOutcome::AlreadyFinished(RunStatus::Cancelled)
        );
        assert_eq!(
            apply(&db, RunWrite::Cancel { agent: "b".into(), id: "r2".into(), now: 21 }).await,
            WriteOutcome::NotFound
        );
        assert_eq!(
            apply(&db, RunWrite::ExpireDue { now: 2000 }).await,
            WriteOutcome::Expired { ids: vec![("r1".into(), "a".into())], delivery: false }
        );
        apply(&db, RunWrite::Purge { before: 1000 }).await;
        assert!(
            db.run("a", "r2").await.unwrap().is_none(),
            "ended before the cut-off: purged"
        );
        assert!(
            db.run("a", "r1").await.unwrap().is_some(),
            "ended after the cut-off: kept"
        );
        let listed = db.list_runs("a", Some(RunStatus::Expired), 10, None).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(db.list_runs("a", None, 10, Some("r1")).await.unwrap().is_empty());
    }
}

both! {
    /// A run that waited past its limit expires when a worker tries to start it.
    async fn a_start_past_the_queue_wait_expires_the_run(db: Store) {
        deployed(&db).await;
        apply(&db, new_run("r1", 10, None)).await;
        assert_eq!(
            apply(&db, start("r1", 5000, 6000)).await,
            WriteOutcome::Expired { ids: vec![("r1".into(), "a".into())], delivery: false }
        );
        assert_eq!(db.run("a", "r1").await.unwrap().unwrap().status, RunStatus::Expired);
    }
}

both! {
    /// A run a stopping host gives back started once: it does not expire when its queue
    /// wait is over (it is past it here, at 5,000 ms for a wait that ended at 1,010), and a
    /// release by a host whose attempt was taken over changes nothing.
    async fn a_released_run_does_not_expire_and_a_stale_release_is_ignored(db: Store) {
        deployed(&db).await;
        apply(&db, new_run("r1", 10, None)).await;
        assert!(matches!(apply(&db, start("r1", 20, 100)).await, WriteOutcome::Started(s) if s.attempt == 1));
        assert_eq!(apply(&db, RunWrite::Release { id: "r1".into(), attempt: 1 }).await, WriteOutcome::Done);
        assert!(
            matches!(apply(&db, RunWrite::ExpireDue { now: 5_000 }).await, WriteOutcome::Expired { ids, .. } if ids.is_empty()),
            "the sweep expired a released run"
        );
        assert!(matches!(apply(&db, start("r1", 5_000, 9_000)).await, WriteOutcome::Started(s) if s.attempt == 1));
        // Its lease lapses; another host takes it over as attempt 2 ...
        apply(&db, RunWrite::Reclaim { now: 10_000, running_here: Vec::new(), max_attempts: 3 }).await;
        assert!(matches!(apply(&db, start("r1", 10_001, 20_000)).await, WriteOutcome::Started(s) if s.attempt == 2));
        // ... and the first host, stopping, gives back the attempt it no longer holds.
        apply(&db, RunWrite::Release { id: "r1".into(), attempt: 1 }).await;
        let run = db.run("a", "r1").await.unwrap().unwrap();
        assert_eq!((run.status, run.attempts), (RunStatus::Running, 2), "a stale release took the run back");
    }
}

both! {
    /// A run whose push has not finished is kept past retention; once delivered, it goes.
    async fn purge_keeps_runs_whose_push_is_pending(db: Store) {
        deployed(&db).await;
        db.deploy("a", 1, &pushing(), 0, None).await.unwrap();
        let mut run = new_run("r1", 10, None);
        if let RunWrite::Insert(new) = &mut run {
            new.deployment = 2;
            new.push = true;
        }
        apply(&db, run).await;
        apply(&db, start("r1", 11, 1000)).await;
        assert_eq!(
            apply(&db, succeed("r1", 12)).await,
            WriteOutcome::Finished { delivery: true }
        );
        assert_eq!(db.next_delivery_at().await.unwrap(), Some(12));
        assert!(
            db.due_deliveries(12, 10, 60_012, vec!["r1".into()]).await.unwrap().is_empty(),
            "a delivery the caller has in flight is left out"
        );
        let due = db.due_deliveries(12, 10, 60_012, Vec::new()).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].event_type.as_str(), due[0].status), ("run.succeeded", DeliveryStatus::Pending));
        apply(&db, RunWrite::Purge { before: 10_000 }).await;
        assert!(
            db.run("a", "r1").await.unwrap().is_some(),
            "its push is pending: kept past retention"
        );
        apply(
            &db,
            RunWrite::Delivery {
                run_id: "r1".into(),
                round: 12,
                status: DeliveryStatus::Delivered,
                attempts: 1,
                last_error: None,
                next_attempt_at: None,
            },
        )
        .await;
        assert_eq!(db.next_delivery_at().await.unwrap(), None);
        let delivered = db.run("a", "r1").await.unwrap().unwrap().delivery.unwrap();
        assert_eq!(delivered.event_id, due[0].event_id, "one webhook-id per event");
        assert_eq!(
            apply(&db, RunWrite::Redeliver { agent: "a".into(), id: "r1".into(), now: 50 }).await,
            WriteOutcome::Redelivering
        );
        let again = db.due_deliveries(50, 10, 60_050, Vec::new()).await.unwrap();
        assert_eq!(again[0].event_id, due[0].event_id, "a redelivery keeps the webhook-id");
        apply(
            &db,
            RunWrite::Delivery {
                run_id: "r1".into(),
                round: 50,
                status: DeliveryStatus::Delivered,
                attempts: 1,
                last_error: None,
                next_attempt_at: None,
            },
        )
        .await;
        apply(&db, RunWrite::Purge { before: 10_000 }).await;
        assert!(db.run("a", "r1").await.unwrap().is_none(), "delivered: purged");
    }
}

both! {
    /// An attempt whose lease lapsed and whose run was taken over by another attempt (on
    /// another host) writes nothing more: its renewals are refused, its progress and its end
    /// ignored; the attempt that took over records the run.
    async fn a_superseded_attempt_writes_nothing(db: Store) {
        deployed(&db).await;
        apply(&db, new_run("r1", 10, None)).await;
        assert!(matches!(apply(&db, start("r1", 11, 20)).await, WriteOutcome::Started(s) if s.attempt == 1));
        let reclaimed = apply(
            &db,
            RunWrite::Reclaim { now: 1_000, running_here: Vec::new(), max_attempts: 3 },
        )
        .await;
        assert!(matches!(reclaimed, WriteOutcome::Reclaimed { .. }), "{reclaimed:?}");
        assert!(matches!(apply(&db, start("r1", 1_001, 9_000)).await, WriteOutcome::Started(s) if s.attempt == 2));
        assert_eq!(
            apply(&db, RunWrite::Renew { id: "r1".into(), attempt: 1, lease_until: 99_000 }).await,
            WriteOutcome::NotRunning
        );
        apply(&db, RunWrite::Progress { id: "r1".into(), attempt: 1, fraction: 0.9, message: "old".into() }).await;
        let mut first = succeed("r1", 1_500);
        if let RunWrite::Finish { attempt, .. } = &mut first {
            *attempt = 1;
        }
        assert_eq!(apply(&db, first).await, WriteOutcome::NotRunning);
        let run = db.run("a", "r1").await.unwrap().unwrap();
        assert_eq!((run.status, run.attempts), (RunStatus::Running, 2));
        assert!(run.progress.is_none(), "{:?}", run.progress);
        let mut second = succeed("r1", 2_000);
        if let RunWrite::Finish { attempt, .. } = &mut second {
            *attempt = 2;
        }
        assert!(matches!(apply(&db, second).await, WriteOutcome::Finished { .. }));
        assert_eq!(db.run("a", "r1").await.unwrap().unwrap().status, RunStatus::Succeeded);
    }
}

both! {
    /// A lease that lapsed by the wall clock (a clock step, or a renewal not yet written) is
    /// not reclaimed from under a worker of this host that is still running the run.
    async fn reclaim_leaves_runs_this_host_is_running(db: Store) {
        deployed(&db).await;
        for id in ["r1", "r2", "r3"] {
            apply(&db, new_run(id, 10, None)).await;
            apply(&db, start(id, 11, 20)).await;
        }
        assert_eq!(
            apply(&db, RunWrite::Renew { id: "r3".into(), attempt: 1, lease_until: 2_000_000 }).await,
            WriteOutcome::Done
        );
        let reclaimed = apply(
            &db,
            RunWrite::Reclaim {
                now: 1_000_000,
                running_here: vec!["r1".into()],
                max_attempts: 3,
            },
        )
        .await;
        assert_eq!(
            reclaimed,
            WriteOutcome::Reclaimed {
                ids: vec![("r2".into(), "a".into())],
                lost: Vec::new(),
                delivery: false,
            }
        );
        assert_eq!(db.run("a", "r1").await.unwrap().unwrap().status, RunStatus::Running);
        assert_eq!(db.run("a", "r3").await.unwrap().unwrap().status, RunStatus::Running, "renewed");
        apply(&db, RunWrite::Release { id: "r1".into(), attempt: 1 }).await;
        let released = db.run("a", "r1").await.unwrap().unwrap();
        assert_eq!((released.status, released.attempts), (RunStatus::Queued, 0));
        // A renewal of a run no longer running tells its worker to stop.
        assert_eq!(
            apply(&db, RunWrite::Renew { id: "r1".into(), attempt: 1, lease_until: 3_000_000 }).await,
            WriteOutcome::NotRunning
        );
    }
}

both! {
    /// A run whose lease lapsed after its last allowed attempt fails as `lost` instead of
    /// being queued for one attempt more than the maximum.
    async fn reclaim_fails_runs_that_used_up_their_attempts(db: Store) {
        deployed(&db).await;
        apply(&db, new_run("r1", 10, None)).await;
        for attempt in 1..=2 {
            apply(&db, start("r1", 10 + attempt, 20)).await;
            let reclaimed = apply(
                &db,
                RunWrite::Reclaim { now: 100, running_here: Vec::new(), max_attempts: 2 },
            )
            .await;
            let WriteOutcome::Reclaimed { ids, lost, .. } = reclaimed else {
                panic!("{reclaimed:?}");
            };
            if attempt == 1 {
                assert_eq!((ids.len(), lost.len()), (1, 0), "queued again");
            } else {
                assert_eq!((ids.len(), lost.len()), (0, 1), "lost after its second attempt");
            }
        }
        let run = db.run("a", "r1").await.unwrap().unwrap();
        assert_eq!((run.status, run.attempts), (RunStatus::Failed, 2));
        assert_eq!(run.error.unwrap().0, "lost");
    }
}

both! {
    /// An agent's stored runs stay within their bound: a run that would pass it is refused,
    /// and purging ended runs makes room again.
    async fn stored_run_bytes_are_bounded_per_agent(db: Store) {
        deployed(&db).await;
        let bounded = |id: &str, created_at: i64| {
            let mut run = new_run(id, created_at, None);
            if let RunWrite::Insert(new) = &mut run {
                new.max_stored_bytes = 5;
            }
            run
        };
        // Each input is `{}`: two bytes.
        assert_eq!(apply(&db, bounded("r1", 10)).await, WriteOutcome::Inserted);
        assert_eq!(apply(&db, bounded("r2", 10)).await, WriteOutcome::Inserted);
        assert_eq!(apply(&db, bounded("r3", 10)).await, WriteOutcome::StorageFull);
        assert!(db.run("a", "r3").await.unwrap().is_none());
        apply(&db, RunWrite::Cancel { agent: "a".into(), id: "r1".into(), now: 20 }).await;
        apply(&db, RunWrite::Purge { before: 100 }).await;
        assert_eq!(apply(&db, bounded("r3", 10)).await, WriteOutcome::Inserted);
        let mut orphan = new_run("r4", 10, None);
        if let RunWrite::Insert(new) = &mut orphan {
            new.agent = "nobody".into();
        }
        assert_eq!(apply(&db, orphan).await, WriteOutcome::NotFound);
    }
}

both! {
    /// Large batches of every kind, mixed, decide each write as it would be decided alone:
    /// an agent near its bound takes what fits, a run named twice is decided in the batch's
    /// order, stale attempts change nothing, pushing runs get their events, and a write that
    /// fails (a run id taken) fails alone. (PostgreSQL applies the common kinds of a batch in
    /// one statement each; this holds it to what SQLite does one write at a time.)
    async fn big_mixed_batches_decide_each_write_as_alone(db: Store) {
        deployed(&db).await;
        db.deploy("a", 1, &pushing(), 0, None).await.unwrap();
        let ids: Vec<String> = (0..60).map(|i| format!("r{i:02}")).collect();
        // Inputs are `{}`, two bytes: a bound of 101 takes 50 of the 60.
        let mut writes: Vec<RunWrite> = ids
            .iter()
            .map(|id| {
                let mut run = new_run(id, 10, None);
                if let RunWrite::Insert(new) = &mut run {
                    new.max_stored_bytes = 101;
                    new.deployment = 2;
                    new.push = true;
                }
                run
            })
            .collect();
        let mut orphan = new_run("orphan", 10, None);
        if let RunWrite::Insert(new) = &mut orphan {
            new.agent = "nobody".into();
        }
        writes.push(orphan);
        let outcomes = applied(&db, writes).await;
        assert!(outcomes[..50].iter().all(|o| *o == Ok(WriteOutcome::Inserted)), "{outcomes:?}");
        assert!(outcomes[50..60].iter().all(|o| *o == Ok(WriteOutcome::StorageFull)), "{outcomes:?}");
        assert_eq!(outcomes[60], Ok(WriteOutcome::NotFound));

        // Starts: r00..r49, r01 twice, one unknown run, and a taken run id inserted again.
        let mut writes: Vec<RunWrite> = ids[..50].iter().map(|id| start(id, 20, 1000)).collect();
        writes.push(start("r01", 20, 1000));
        writes.push(start("nope", 20, 1000));
        let mut taken = new_run("r02", 20, None);
        if let RunWrite::Insert(new) = &mut taken {
            new.max_stored_bytes = u64::MAX;
        }
        writes.push(taken);
        writes.push(new_run("fresh", 20, None));
        let outcomes = applied(&db, writes).await;
        for (id, outcome) in ids.iter().zip(&outcomes[..50]) {
            assert!(
                matches!(outcome, Ok(WriteOutcome::Started(s)) if s.attempt == 1 && s.deployment == 2 && s.input == b"{}"),
                "{id}: {outcome:?}"
            );
        }
        assert_eq!(outcomes[50], Ok(WriteOutcome::NotStarted(Some(RunStatus::Running))));
        assert_eq!(outcomes[51], Ok(WriteOutcome::NotStarted(None)));
        assert!(outcomes[52].is_err(), "a run id taken fails alone: {:?}", outcomes[52]);
        assert_eq!(outcomes[53], Ok(WriteOutcome::Inserted), "and the rest commit");

        // Ends and renewals: r00..r39 succeed; r40 ends as attempt 2 (stale);
        // r41..r49 renew, r49 as attempt 3 (stale); r45 is cancelled, then renews.
        let mut writes: Vec<RunWrite> = ids[..40].iter().map(|id| succeed(id, 30)).collect();
        let mut stale = succeed("r40", 30);
        if let RunWrite::Finish { attempt, .. } = &mut stale {
            *attempt = 2;
        }
        writes.push(stale);
        for id in &ids[41..50] {
            writes.push(RunWrite::Renew {
                id: id.clone(),
                attempt: if id == "r49" { 3 } else { 1 },
                lease_until: 2000,
            });
        }
        writes.insert(40, RunWrite::Cancel { agent: "a".into(), id: "r45".into(), now: 30 });
        let outcomes = applied(&db, writes).await;
        for (i, outcome) in outcomes[..40].iter().enumerate() {
            assert_eq!(*outcome, Ok(WriteOutcome::Finished { delivery: true }), "r{i:02}");
        }
        assert_eq!(
            outcomes[40],
            Ok(WriteOutcome::Cancelled { was_running: true, delivery: true })
        );
        assert_eq!(outcomes[41], Ok(WriteOutcome::NotRunning), "a stale attempt ends nothing");
        let renewals = &outcomes[42..];
        for (id, outcome) in ids[41..50].iter().zip(renewals) {
            let expected = if id == "r45" || id == "r49" {
                WriteOutcome::NotRunning
            } else {
                WriteOutcome::Done
            };
            assert_eq!(*outcome, Ok(expected), "{id}");
        }

        let run = db.run("a", "r07").await.unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Succeeded);
        assert_eq!(run.output, Some(("text/plain".into(), b"ok".to_vec())));
        assert_eq!(db.run("a", "r40").await.unwrap().unwrap().status, RunStatus::Running);
        assert_eq!(db.run("a", "r45").await.unwrap().unwrap().status, RunStatus::Cancelled);
        // The deployment pushes: every run that ended has its event, each with its own id.
        let due = db.due_deliveries(30, 100, 60_030, Vec::new()).await.unwrap();
        assert_eq!(due.len(), 41, "40 succeeded and 1 cancelled");
        let mut events: Vec<&str> = due.iter().map(|d| d.event_id.as_str()).collect();
        events.sort_unstable();
        events.dedup();
        assert_eq!(events.len(), 41);
        // What the caller has in flight is read past: the limit counts only the others
        // (past the claims just made, which PostgreSQL would honour).
        let busy: Vec<String> = due[..2].iter().map(|d| d.run_id.clone()).collect();
        let others = db.due_deliveries(60_031, 3, 120_031, busy.clone()).await.unwrap();
        assert_eq!(others.len(), 3);
        assert!(others.iter().all(|d| !busy.contains(&d.run_id)), "{others:?}");
        let active = db.active_runs().await.unwrap();
        assert_eq!((active[0].running, active[0].queued), (9, 1), "r40..r49 but r45; `fresh`");
    }
}

/// Applies `writes` in one batch and answers each outcome, with failed writes as their
/// message.
async fn applied(
    db: &gust_store::Store,
    writes: Vec<RunWrite>,
) -> Vec<Result<WriteOutcome, String>> {
    let (_, applied) = db.apply_run_writes(writes).await;
    applied
        .unwrap()
        .into_iter()
        .map(|outcome| outcome.map_err(|e| e.to_string()))
        .collect()
}

both! {
    /// Writes that name one run in one batch apply in the batch's order: a renewal, the
    /// finish, and a renewal after it that finds the run ended.
    async fn writes_of_one_run_in_one_batch_apply_in_order(db: Store) {
        deployed(&db).await;
        apply(&db, new_run("r1", 10, None)).await;
        apply(&db, start("r1", 11, 99)).await;
        let outcomes = applied(
            &db,
            vec![
                RunWrite::Renew { id: "r1".into(), attempt: 1, lease_until: 500 },
                succeed("r1", 30),
                RunWrite::Renew { id: "r1".into(), attempt: 1, lease_until: 600 },
            ],
        )
        .await;
        assert_eq!(
            outcomes,
            vec![
                Ok(WriteOutcome::Done),
                Ok(WriteOutcome::Finished { delivery: false }),
                Ok(WriteOutcome::NotRunning)
            ]
        );
        assert_eq!(db.run("a", "r1").await.unwrap().unwrap().status, RunStatus::Succeeded);
    }
}
