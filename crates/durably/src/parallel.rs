//! Parallel steps (upstream's `step.all`): several named steps of one run executed at once and
//! joined, through [`StepContext::all`](crate::StepContext::all).
//!
//! A branch is an ordinary step future (`step.run(..)`, `step.run_with(..)`), so replay,
//! attempts, fencing and cancellation are those of a step. The join is all-settled: it waits
//! for every branch, then returns the outputs in branch order or one error chosen by
//! upstream's precedence (see [`StepContext::all`](crate::StepContext::all)). While branches
//! overlap, their logs carry no step name (as upstream's).

use std::future::Future;

use crate::error::{Error, Result};

/// Step futures that [`StepContext::all`](crate::StepContext::all) joins: a tuple of up to
/// eight (each with its own output type) or a `Vec` (all of one type).
pub trait Branches {
    /// The joined outputs: a tuple, or a `Vec` in branch order.
    type Output;

    /// Runs every branch to its end: the outputs, or every error in branch order.
    fn settle(self) -> impl Future<Output = std::result::Result<Self::Output, Vec<Error>>> + Send;
}

impl<T, F> Branches for Vec<F>
where
    T: Send,
    F: Future<Output = Result<T>> + Send,
{
    type Output = Vec<T>;

    async fn settle(self) -> std::result::Result<Vec<T>, Vec<Error>> {
        let mut outputs = Vec::with_capacity(self.len());
        let mut errors = Vec::new();
        for result in futures::future::join_all(self).await {
            match result {
                Ok(output) => outputs.push(output),
                Err(error) => errors.push(error),
            }
        }
        if errors.is_empty() {
            Ok(outputs)
        } else {
            Err(errors)
        }
    }
}

macro_rules! tuple_branches {
    ($($future:ident $output:ident $value:ident),+) => {
        impl<$($output: Send, $future: Future<Output = Result<$output>> + Send),+> Branches
            for ($($future,)+)
        {
            type Output = ($($output,)+);

            fn settle(
                self,
            ) -> impl Future<Output = std::result::Result<Self::Output, Vec<Error>>> + Send {
                async move {
                    let ($($value,)+) = self;
                    let ($($value,)+) = futures::join!($($value),+);
                    let mut errors = Vec::new();
                    $(
                        let $value = match $value {
                            Ok(output) => Some(output),
                            Err(error) => {
                                errors.push(error);
                                None
                            }
                        };
                    )+
                    match ($($value,)+) {
                        ($(Some($value),)+) => Ok(($($value,)+)),
                        _ => Err(errors),
                    }
                }
            }
        }
    };
}

tuple_branches!(F1 T1 v1);
tuple_branches!(F1 T1 v1, F2 T2 v2);
tuple_branches!(F1 T1 v1, F2 T2 v2, F3 T3 v3);
tuple_branches!(F1 T1 v1, F2 T2 v2, F3 T3 v3, F4 T4 v4);
tuple_branches!(F1 T1 v1, F2 T2 v2, F3 T3 v3, F4 T4 v4, F5 T5 v5);
tuple_branches!(F1 T1 v1, F2 T2 v2, F3 T3 v3, F4 T4 v4, F5 T5 v5, F6 T6 v6);
tuple_branches!(F1 T1 v1, F2 T2 v2, F3 T3 v3, F4 T4 v4, F5 T5 v5, F6 T6 v6, F7 T7 v7);
tuple_branches!(F1 T1 v1, F2 T2 v2, F3 T3 v3, F4 T4 v4, F5 T5 v5, F6 T6 v6, F7 T7 v7, F8 T8 v8);
