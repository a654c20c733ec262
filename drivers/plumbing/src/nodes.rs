//! The order in which a connection tries a broker's nodes.

use tidings_core::broker_url::Node;

/// A broker's nodes in a random order, with the one in use.
///
/// Shuffled once per connection, so a thousand daemons given the same URL spread over the
/// nodes instead of all connecting to the first. After a loss the next node in that order is
/// tried first and the lost one last.
#[derive(Debug, Clone)]
pub struct NodeOrder {
    nodes: Vec<Node>,
    /// Index of the node in use (or tried last).
    at: usize,
}

impl NodeOrder {
    /// `nodes` shuffled. Panics on an empty list: a parsed URL always has a node.
    pub fn shuffled(nodes: &[Node]) -> Self {
        assert!(!nodes.is_empty(), "a broker url always names a node");
        let mut nodes = nodes.to_vec();
        fastrand::shuffle(&mut nodes);
        Self { nodes, at: 0 }
    }

    /// Every node once, starting with the one after the node in use and ending with it.
    pub fn round(&self) -> impl Iterator<Item = (usize, &Node)> {
        let n = self.nodes.len();
        (1..=n).map(move |step| {
            let i = (self.at + step) % n;
            (i, &self.nodes[i])
        })
    }

    /// Every node once, from the first of the shuffled order.
    pub fn first_round(&self) -> impl Iterator<Item = (usize, &Node)> {
        self.nodes.iter().enumerate()
    }

    /// Marks node `index` (from [`round`](Self::round)) as the one in use.
    pub fn use_node(&mut self, index: usize) {
        self.at = index;
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true; here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::BrokerUrl;

    fn nodes(url: &str) -> Vec<Node> {
        BrokerUrl::parse(url, "t", &["amqp"])
            .unwrap()
            .nodes()
            .to_vec()
    }

    #[test]
    fn a_round_tries_the_others_first_and_the_lost_node_last() {
        let mut order = NodeOrder::shuffled(&nodes("amqp://a,b,c"));
        let first: Vec<usize> = order.first_round().map(|(i, _)| i).collect();
        assert_eq!(first, [0, 1, 2]);
        order.use_node(1);
        let round: Vec<usize> = order.round().map(|(i, _)| i).collect();
        assert_eq!(round, [2, 0, 1]);
        let one = NodeOrder::shuffled(&nodes("amqp://a"));
        assert_eq!(one.round().count(), 1);
    }

    #[test]
    fn the_order_is_shuffled_so_daemons_spread_over_the_nodes() {
        let all = nodes("amqp://a,b,c");
        let mut first_seen = std::collections::HashMap::new();
        for _ in 0..600 {
            let order = NodeOrder::shuffled(&all);
            let (_, node) = order.first_round().next().unwrap();
            *first_seen.entry(node.host().to_owned()).or_insert(0) += 1;
        }
        assert_eq!(first_seen.len(), 3, "{first_seen:?}");
        assert!(first_seen.values().all(|n| *n > 120), "{first_seen:?}");
    }
}
