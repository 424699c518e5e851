//! [`Survey`]: asks every live instance one question over Redis pub/sub and gathers their
//! answers (what the server API needs to see the whole cluster: sockets, rooms, nodes, and
//! to disconnect a socket wherever it is).
//!
//! A question goes to `<prefix>:survey` as `{id, from, body}`; each instance answers on
//! `<prefix>:survey:<from>` with `{id, node, body}`. The asker knows whom to wait for from the
//! lease set (`<prefix>:nodes`, the instances whose lease has not expired) and waits at most
//! the given time: instances that did not answer are named, never silently left out.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use socketioxide_redis::drivers::Driver;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Cluster, now_ms};

/// Most questions waiting in the handler's buffer.
const BUFFER: usize = 256;

#[derive(Serialize, Deserialize)]
struct Question {
    id: String,
    from: String,
    body: Value,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    id: String,
    node: String,
    body: Value,
}

/// What a survey gathered from the other instances.
#[derive(Debug, Default)]
pub struct Gathered {
    /// (instance id, its answer).
    pub answers: Vec<(String, Value)>,
    /// Live instances that did not answer in time.
    pub missing: Vec<String>,
    /// Redis did not answer: the other instances could not be asked at all.
    pub unreachable: bool,
}

/// The asking side: pending questions by id.
pub struct Survey {
    cluster: Arc<Cluster>,
    pending: Mutex<HashMap<String, mpsc::Sender<(String, Value)>>>,
}

impl Survey {
    /// A survey over the cluster's connections (nothing runs until [`Survey::serve`]).
    pub fn new(cluster: Arc<Cluster>) -> Arc<Survey> {
        Arc::new(Survey {
            cluster,
            pending: Mutex::new(HashMap::new()),
        })
    }

    fn channel(&self) -> String {
        self.cluster.redis.key(&["survey"])
    }

    fn reply_channel(&self, node: &str) -> String {
        self.cluster.redis.key(&["survey", node])
    }

    /// Answers the other instances' questions with `answer` and routes the answers to this
    /// instance's questions, until `stop`.
    pub async fn serve<F, Fut>(self: Arc<Self>, answer: F, stop: CancellationToken)
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Value> + Send + 'static,
    {
        let driver = self.cluster.driver();
        let me = self.cluster.redis.node.clone();
        let (questions, answers) = match (
            driver.subscribe(self.channel(), BUFFER).await,
            driver.subscribe(self.reply_channel(&me), BUFFER).await,
        ) {
            (Ok(q), Ok(a)) => (q, a),
            _ => {
                tracing::warn!(
                    "cluster survey could not subscribe; the server API sees this instance only"
                );
                return;
            }
        };
        let answer = Arc::new(answer);
        let asked = {
            let driver = driver.clone();
            let me = me.clone();
            let stop = stop.clone();
            let this = self.clone();
            async move {
                let mut questions = std::pin::pin!(questions.take_until(stop.cancelled()));
                while let Some((_, bytes)) = questions.next().await {
                    let Ok(q) = serde_json::from_slice::<Question>(&bytes) else {
                        continue;
                    };
                    if q.from == me {
                        continue;
                    }
                    let (driver, me, answer) = (driver.clone(), me.clone(), answer.clone());
                    let to = this.reply_channel(&q.from);
                    tokio::spawn(async move {
                        let body = answer(q.body).await;
                        let reply = Answer {
                            id: q.id,
                            node: me,
                            body,
                        };
                        if let Ok(bytes) = serde_json::to_vec(&reply) {
                            let _ = driver.publish(to, bytes).await;
                        }
                    });
                }
            }
        };
        let routed = async {
            let mut answers = std::pin::pin!(answers.take_until(stop.cancelled()));
            while let Some((_, bytes)) = answers.next().await {
                let Ok(a) = serde_json::from_slice::<Answer>(&bytes) else {
                    continue;
                };
                let tx = self
                    .pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&a.id)
                    .cloned();
                if let Some(tx) = tx {
                    let _ = tx.try_send((a.node, a.body));
                }
            }
        };
        tokio::join!(asked, routed);
    }

    /// The instances whose lease has not expired (this one included), or None when Redis
    /// does not answer.
    pub async fn live_nodes(&self) -> Option<Vec<String>> {
        let key = self.cluster.redis.nodes_key(0);
        let now = format!("({}", now_ms());
        self.cluster
            .redis
            .call(async |c| {
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&key)
                    .arg(&now)
                    .arg("+inf")
                    .query_async::<Vec<String>>(c)
                    .await
            })
            .await
    }

    /// Asks every other live instance `body` and waits at most `wait` for their answers.
    pub async fn ask(&self, body: Value, wait: Duration) -> Gathered {
        let me = self.cluster.redis.node.clone();
        let Some(nodes) = self.live_nodes().await else {
            return Gathered {
                unreachable: true,
                ..Gathered::default()
            };
        };
        let mut expected: Vec<String> = nodes.into_iter().filter(|n| *n != me).collect();
        if expected.is_empty() {
            return Gathered::default();
        }
        let id = uuid::Uuid::now_v7().to_string();
        let (tx, mut rx) = mpsc::channel(expected.len() + 1);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone(), tx);
        let question = Question {
            id: id.clone(),
            from: me,
            body,
        };
        let mut gathered = Gathered::default();
        if let Ok(bytes) = serde_json::to_vec(&question) {
            let _ = self.cluster.driver().publish(self.channel(), bytes).await;
            let deadline = tokio::time::Instant::now() + wait;
            while !expected.is_empty() {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some((node, body))) => {
                        if let Some(i) = expected.iter().position(|n| *n == node) {
                            expected.swap_remove(i);
                            gathered.answers.push((node, body));
                        }
                    }
                    _ => break,
                }
            }
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        expected.sort();
        gathered.missing = expected;
        gathered
    }
}
