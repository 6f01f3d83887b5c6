//! The executor of the guests' client: the futures hyper spawns for one connection run on
//! one tokio task, never on two threads at once.
//!
//! Why: hyper's HTTP/2 client dispatches a request on one task (it opens the request's
//! stream, then asks the connection whether it still takes streams) while another task reads
//! the connection's frames. A GOAWAY read between those two steps makes the second fail, and
//! hyper fails the request with the GOAWAY's error although its stream is open and goes out:
//! the very error a request above the GOAWAY's last stream gets, which `replay` sends again,
//! so the server answered it twice. A server closing in two steps (hyper's, front ends that
//! drain) takes every stream opened before its second GOAWAY, which makes the window wide
//! enough to hit under load (hyperium/hyper#2500 is the family of races). On one task the
//! two steps never interleave with reading frames, and a GOAWAY's error means what it says.
//!
//! How: hyper-util starts a connection while it sends a request, on the request's own task
//! or on one it spawns to finish a connect in the background. The handshake spawns the task
//! that reads frames, then the client spawns the dispatching one, which spawns one per
//! request for its answer and one per request body. Every future spawned while a request is
//! sent ([`scope`]), or by a future started so, joins one group: a tokio task that polls
//! its members in turn. The group ends once it has no member left and nothing can add one.
//! Outside a scope the executor spawns as tokio does, so a request sent without one would
//! bring the race back: the client's pool sends only through [`scope`]. Other futures join
//! groups too: hyper-util's task that sweeps idle connections joins the group of the request
//! that first pooled one (and lives as long as the pool), and an HTTP/1.1 request whose
//! answer's body is still coming makes a group for the future that puts its connection back.

use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use futures::task::AtomicWaker;

/// What hyper-util hands its executor (its `BoxSendFuture`), and what a group holds.
pub(crate) type Member = Pin<Box<dyn Future<Output = ()> + Send>>;

tokio::task_local! {
    /// The group that futures spawned here join.
    static HERE: Slot;
}

/// hyper's executor for the guests' client (see the module's comment).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Colocated;

impl hyper::rt::Executor<Member> for Colocated {
    fn execute(&self, future: Member) {
        let mut future = Some(future);
        let _outside = HERE.try_with(|slot| {
            if let Some(future) = future.take() {
                slot.add(future);
            }
        });
        if let Some(future) = future {
            tokio::spawn(future);
        }
    }
}

/// Runs `send` (a request being sent through the client) so that what it spawns is grouped.
/// Every request the client sends goes through here (see the module's comment).
pub(crate) async fn scope<F: Future>(send: F) -> F::Output {
    HERE.scope(
        Slot {
            group: RefCell::new(None),
            holder: true,
        },
        send,
    )
    .await
}

/// Where a spawned future goes: a scope's group, made on its first future, or the group
/// whose member is being polled.
struct Slot {
    group: RefCell<Option<Arc<Group>>>,
    /// A scope's slot (it holds the group open); else the group's own.
    holder: bool,
}

/// One group's new members and the task that polls them.
#[derive(Default)]
struct Group {
    incoming: Mutex<Vec<Member>>,
    /// The scope that made the group can still add members: until it ends.
    open: AtomicBool,
    task: AtomicWaker,
}

impl Slot {
    fn add(&self, member: Member) {
        let mut group = self.group.borrow_mut();
        let group = group.get_or_insert_with(|| {
            let group = Arc::new(Group {
                open: AtomicBool::new(true),
                ..Group::default()
            });
            tokio::spawn(run(Arc::clone(&group)));
            group
        });
        group.incoming().push(member);
        // The group's own task takes in what its members spawn once they are polled.
        if self.holder {
            group.task.wake();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.holder
            && let Some(group) = self.group.get_mut()
        {
            // After its last member was added: the group's task reads this first.
            group.open.store(false, Ordering::SeqCst);
            group.task.wake();
        }
    }
}

impl Group {
    fn incoming(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.incoming.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A group's task: polls its members until none is left and none can come. A member that
/// panics ends alone, as a task of its own would: the rest of its connection's futures
/// (other requests' answers) go on.
async fn run(group: Arc<Group>) {
    let mut members = FuturesUnordered::new();
    std::future::poll_fn(|cx| {
        group.task.register(cx.waker());
        loop {
            members.extend(
                group
                    .incoming()
                    .drain(..)
                    .map(|member| AssertUnwindSafe(member).catch_unwind()),
            );
            let own = Slot {
                group: RefCell::new(Some(Arc::clone(&group))),
                holder: false,
            };
            match HERE.sync_scope(own, || members.poll_next_unpin(cx)) {
                Poll::Ready(Some(Ok(()))) => continue,
                Poll::Ready(Some(Err(_))) => {
                    tracing::error!("a future of the guests' HTTP client panicked");
                    continue;
                }
                Poll::Ready(None) | Poll::Pending => {}
            }
            // Read before `incoming`: the scope adds its members before it closes, so once
            // it is closed, whatever it added is in `incoming` already.
            let open = group.open.load(Ordering::SeqCst);
            if !group.incoming().is_empty() {
                continue;
            }
            if members.is_empty() && !open {
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use hyper::rt::Executor as _;
    use tokio::sync::oneshot;

    use super::*;

    /// What a scope spawns, and what that spawns later, runs on one task; outside a scope
    /// each future gets its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_a_scope_spawns_runs_on_one_task() {
        let (first_tx, first) = oneshot::channel();
        let (later_tx, later) = oneshot::channel();
        let (go, wait) = oneshot::channel::<()>();
        let sender = tokio::spawn(scope(async move {
            Colocated.execute(Box::pin(async move {
                let _ = first_tx.send(tokio::task::id());
                // Spawned by a member, after the scope has ended.
                let _ = wait.await;
                Colocated.execute(Box::pin(async move {
                    let _ = later_tx.send(tokio::task::id());
                }));
            }));
            tokio::task::id()
        }));
        let sender = sender.await.unwrap();
        let first = first.await.unwrap();
        assert_ne!(first, sender, "the group is a task of its own");
        go.send(()).unwrap();
        assert_eq!(later.await.unwrap(), first);

        let (outside_tx, outside) = oneshot::channel();
        Colocated.execute(Box::pin(async move {
            let _ = outside_tx.send(tokio::task::id());
        }));
        assert_ne!(outside.await.unwrap(), first);
    }

    /// Every member a scope adds runs, the last added just before the scope ends, while the
    /// group's task, on another thread, may be deciding whether to end. (The window where
    /// reading `open` after `incoming` lost a member is a few instructions wide; this
    /// did not hit it in 10 runs with that order.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_added_as_its_scope_ends_runs() {
        const SCOPES: usize = 10_000;
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut scopes = tokio::task::JoinSet::new();
        for _ in 0..SCOPES {
            let ran = Arc::clone(&ran);
            scopes.spawn(scope(async move {
                // The first starts the group's task; the second comes while it may be
                // deciding whether to end, just before the scope ends.
                let first = Arc::clone(&ran);
                Colocated.execute(Box::pin(async move {
                    first.fetch_add(1, Ordering::SeqCst);
                }));
                tokio::task::yield_now().await;
                Colocated.execute(Box::pin(async move {
                    ran.fetch_add(1, Ordering::SeqCst);
                }));
            }));
        }
        scopes.join_all().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while ran.load(Ordering::SeqCst) < 2 * SCOPES {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} of {} members ran",
                ran.load(Ordering::SeqCst),
                2 * SCOPES
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A member that panics ends alone; the others of its group go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_that_panics_ends_alone() {
        let (go, wait) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        tokio::spawn(scope(async move {
            Colocated.execute(Box::pin(async move {
                let _ = wait.await;
                let _ = done_tx.send(());
            }));
            Colocated.execute(Box::pin(async { panic!("a member panics") }));
        }))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        go.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), done)
            .await
            .expect("the other member went on")
            .unwrap();
    }

    /// A group's task ends with its last member once its scope has ended, and not before:
    /// a member still running keeps it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_ends_with_its_last_member() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let (go, wait) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel();
        scope(async move {
            Colocated.execute(Box::pin(async move {
                let _ = wait.await;
                let _ = done_tx.send(());
            }));
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(metrics.num_alive_tasks(), before + 1, "the group lives on");
        go.send(()).unwrap();
        done.await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metrics.num_alive_tasks() > before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the group's task lives on"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
