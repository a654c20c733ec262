//! The supervisor against a fake broker whose nodes the tests take up and down.

use std::collections::HashSet;

use tidings_core::BrokerUrl;

use super::*;

/// A broker of nodes `a`, `b`, `c` (by host name); a node not in `up` refuses connections,
/// and a connection to it is lost within 10 ms of it going down.
#[derive(Default)]
struct Fake {
    up: Arc<Mutex<HashSet<String>>>,
    opens: Arc<AtomicU64>,
}

impl Fake {
    fn is_up(up: &Mutex<HashSet<String>>, node: &Node) -> bool {
        up.lock().unwrap().contains(node.host())
    }
}

#[async_trait]
impl Connector for Fake {
    type Live = String;
    type Owned = ();

    async fn open(&self, node: &Node) -> Result<(String, ())> {
        self.opens.fetch_add(1, Ordering::SeqCst);
        if Self::is_up(&self.up, node) {
            Ok((node.host().to_owned(), ()))
        } else {
            Err(Error::new(ErrorKind::Connection, format!("{node} refused")))
        }
    }

    async fn run(&self, current: Arc<Current<String>>, _: (), shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = current.lost().cancelled() => return,
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(10)) => {
                    if !Self::is_up(&self.up, &current.node) {
                        return;
                    }
                }
            }
        }
    }
}

fn nodes() -> Vec<Node> {
    BrokerUrl::parse("amqp://a:1,b:2,c:3", "t", &["amqp"])
        .unwrap()
        .nodes()
        .to_vec()
}

fn settings() -> Settings {
    Settings {
        broker: "Fake",
        redacted: "amqp://a:1,b:2,c:3".into(),
        open_timeout: Duration::from_secs(1),
    }
}

fn set_up(up: &Mutex<HashSet<String>>, hosts: &[&str]) {
    *up.lock().unwrap() = hosts.iter().map(|h| h.to_string()).collect();
}

async fn started(hosts: &[&str]) -> (Arc<Supervisor<Fake>>, Arc<Mutex<HashSet<String>>>) {
    let fake = Fake::default();
    let up = fake.up.clone();
    set_up(&up, hosts);
    let supervisor = Supervisor::start(fake, &nodes(), settings()).await.unwrap();
    (supervisor, up)
}

#[tokio::test]
async fn start_fails_naming_every_node_when_none_answers() {
    let e = Supervisor::start(Fake::default(), &nodes(), settings())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection);
    let text = e.to_string();
    assert!(
        text.contains("no node of the broker answered (3 tried)"),
        "{text}"
    );
    for node in ["a:1", "b:2", "c:3"] {
        assert!(text.contains(&format!("{node} refused")), "{text}");
    }
}

#[tokio::test]
async fn a_lost_node_is_replaced_by_a_live_one_and_status_shows_the_move() {
    let (supervisor, up) = started(&["a", "b", "c"]).await;
    let first = supervisor.current().unwrap();
    assert_eq!(first.generation, 1);
    let mut status = supervisor.status();
    assert_eq!(
        *status.borrow_and_update(),
        Status::Connected {
            node: first.node.to_string()
        }
    );
    // Take the node in use down; the connection moves to another one.
    let others: Vec<&str> = ["a", "b", "c"]
        .into_iter()
        .filter(|h| *h != first.live)
        .collect();
    set_up(&up, &others);
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        supervisor.current_after(first.generation, None),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(second.generation, 2);
    assert_ne!(second.live, first.live);
    assert!(first.lost().is_cancelled());
    let seen = status
        .wait_for(|s| matches!(s, Status::Connected { node } if *node == second.node.to_string()))
        .await
        .is_ok();
    assert!(seen);
}

#[tokio::test]
async fn a_stale_generation_reported_broken_changes_nothing() {
    let (supervisor, _up) = started(&["a", "b", "c"]).await;
    let first = supervisor.current().unwrap();
    supervisor.report_broken(first.generation);
    let second = tokio::time::timeout(
        Duration::from_secs(5),
        supervisor.current_after(first.generation, None),
    )
    .await
    .unwrap()
    .unwrap();
    // Reporting the old generation again does not cost the new connection.
    supervisor.report_broken(first.generation);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let still = supervisor.current().unwrap();
    assert_eq!(still.generation, second.generation);
    assert!(!still.lost().is_cancelled());
}

#[tokio::test]
async fn waiting_times_out_while_every_node_is_down_and_resumes_when_one_returns() {
    let (supervisor, up) = started(&["b"]).await;
    let first = supervisor.current().unwrap();
    set_up(&up, &[]);
    let waited = supervisor
        .current_after(
            first.generation,
            Some(Instant::now() + Duration::from_millis(300)),
        )
        .await;
    assert_eq!(waited.unwrap_err(), NotLive::TimedOut);
    assert_eq!(*supervisor.status().borrow(), Status::Reconnecting);
    set_up(&up, &["c"]);
    let back = tokio::time::timeout(
        Duration::from_secs(10),
        supervisor.current_after(first.generation, None),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(back.live, "c");
}

#[tokio::test]
async fn shutdown_fails_waiters_and_closes() {
    let (supervisor, up) = started(&["a"]).await;
    let first = supervisor.current().unwrap();
    set_up(&up, &[]);
    let waiter = {
        let supervisor = supervisor.clone();
        tokio::spawn(async move { supervisor.current_after(first.generation, None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    supervisor.shutdown();
    assert_eq!(waiter.await.unwrap().unwrap_err(), NotLive::Closed);
    assert_eq!(*supervisor.status().borrow(), Status::Closed);
    assert!(supervisor.current().is_none());
}

#[tokio::test]
async fn dropping_the_supervisor_ends_its_task_and_connection() {
    let fake = Fake::default();
    let opens = fake.opens.clone();
    let up = fake.up.clone();
    set_up(&up, &["a", "b", "c"]);
    let supervisor = Supervisor::start(fake, &nodes(), settings()).await.unwrap();
    let current = supervisor.current().unwrap();
    drop(supervisor);
    tokio::time::timeout(Duration::from_secs(1), current.lost().cancelled())
        .await
        .unwrap();
    let before = opens.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        opens.load(Ordering::SeqCst),
        before,
        "no reconnect after drop"
    );
}
