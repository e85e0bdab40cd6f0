//! Where the account actors of one batch put their answers.
//!
//! Owns the batch's result slots (one per command, by the command's index in the batch)
//! and the count of actors that still owe an answer. The entry point hands every actor it
//! sends commands to a [`Reply`]; the actor writes its results straight into the slots, so
//! a batch that touches thousands of accounts costs one shared allocation instead of a
//! channel, a future and two vectors per account.
//!
//! Must never: let a reply answer twice, or leave the caller waiting for a reply that was
//! dropped: a reply dropped unanswered (its message never delivered, or its actor stopped)
//! counts as answered and leaves its slots empty, which the caller reports as
//! `outcome_unknown`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use cells::ledger::CommandResult;

struct State {
    results: Vec<Option<CommandResult>>,
    /// Replies handed out and not yet answered or dropped.
    outstanding: usize,
    waker: Option<Waker>,
}

/// The result slots of one batch.
pub struct BatchAnswers {
    state: Mutex<State>,
}

impl BatchAnswers {
    /// Slots for a batch of `commands` commands, no reply handed out yet.
    pub fn new(commands: usize) -> Arc<BatchAnswers> {
        Arc::new(BatchAnswers {
            state: Mutex::new(State {
                results: vec![None; commands],
                outstanding: 0,
                waker: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the slots half-written in a way that
        // matters: every slot is written whole.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A reply for one actor's share of the batch.
    pub fn reply(self: &Arc<Self>) -> Reply {
        self.lock().outstanding += 1;
        Reply {
            answers: Some(Arc::clone(self)),
        }
    }

    /// Resolves once every reply handed out has answered or been dropped; then gives the
    /// slots (empty where no answer came).
    pub fn all(self: &Arc<Self>) -> AllAnswered {
        AllAnswered {
            answers: Arc::clone(self),
        }
    }

    fn finish_one(&self, state: &mut State) {
        assert!(state.outstanding > 0, "a reply finished twice");
        state.outstanding -= 1;
        if state.outstanding == 0 {
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
    }
}

/// One actor's share of a batch: answered once, or dropped.
pub struct Reply {
    answers: Option<Arc<BatchAnswers>>,
}

impl Reply {
    /// Writes `(index, result)` pairs into the batch's slots.
    pub fn answer(mut self, results: impl IntoIterator<Item = (usize, CommandResult)>) {
        let Some(answers) = self.answers.take() else {
            return;
        };
        let mut state = answers.lock();
        for (index, result) in results {
            let slot = state
                .results
                .get_mut(index)
                .expect("an actor answers only indexes of its batch");
            debug_assert!(slot.is_none(), "two answers for command {index}");
            *slot = Some(result);
        }
        answers.finish_one(&mut state);
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(answers) = self.answers.take() {
            let mut state = answers.lock();
            answers.finish_one(&mut state);
        }
    }
}

/// See [`BatchAnswers::all`].
pub struct AllAnswered {
    answers: Arc<BatchAnswers>,
}

impl Future for AllAnswered {
    type Output = Vec<Option<CommandResult>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.answers.lock();
        if state.outstanding == 0 {
            return Poll::Ready(std::mem::take(&mut state.results));
        }
        match &state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => state.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cells::ledger::ErrorCode;
    use futures::executor::block_on;

    #[test]
    fn every_reply_answers_or_is_dropped_before_the_batch_resolves() {
        let answers = BatchAnswers::new(4);
        let first = answers.reply();
        let second = answers.reply();
        let third = answers.reply();
        let waiter = std::thread::spawn({
            let answers = Arc::clone(&answers);
            move || block_on(answers.all())
        });
        first.answer([
            (0, Err(ErrorCode::Overloaded)),
            (2, Err(ErrorCode::NotOwner)),
        ]);
        drop(second);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "resolved with a reply outstanding");
        third.answer([(3, Err(ErrorCode::UnknownAccount))]);
        let results = waiter.join().unwrap();
        assert_eq!(
            results,
            vec![
                Some(Err(ErrorCode::Overloaded)),
                None,
                Some(Err(ErrorCode::NotOwner)),
                Some(Err(ErrorCode::UnknownAccount)),
            ]
        );
    }

    #[test]
    fn a_batch_without_replies_resolves_at_once() {
        let answers = BatchAnswers::new(2);
        assert_eq!(block_on(answers.all()), vec![None, None]);
    }
}
