//! The one way in: every delivery a bus handles — to a subscription, to an RPC server, or a
//! reply to a caller — comes in through [`receive`], which runs the layers of the handle that
//! subscribed, served or called around the path's own steps.

use std::future::Future;
use std::sync::Arc;

use crate::layer::{Handled, Incoming, Inner, Layer, Next};

/// Runs `layers` around `steps` for `incoming`, and says what became of it. (A path with no
/// layers to run may call its steps directly and never build an [`Incoming`].)
pub(crate) async fn receive<F, Fut>(
    layers: &[Arc<dyn Layer>],
    incoming: Incoming,
    steps: F,
) -> Handled
where
    F: Fn(Incoming) -> Fut + Send + Sync,
    Fut: Future<Output = Handled> + Send,
{
    let inner = |message: Incoming| Box::pin(steps(message)) as _;
    let inner: &Inner<'_, Incoming> = &inner;
    Next::chain(layers, inner).run(incoming).await
}
