//! Where the account actors of one batch put their answers.
//!
//! Owns the batch's answers (`(command index, result)` pairs, in the order actors gave
//! them) and the count of actors that still owe an answer. The entry point hands every
//! actor it sends commands to a [`Reply`]; the actor appends its results to the shared
//! list, so a batch that touches thousands of accounts costs one shared allocation instead
//! of a channel, a future and two vectors per account. Appending, not writing into a slot
//! per command: the actor's thread then writes one run of memory per answer instead of
//! missing the cache at a random slot per command (measured, BENCHMARKS.md); the caller
//! puts the results in place.
//!
//! An actor also hands back the item list it answers for ([`Reply::answer`]): the caller
//! drops it on its own thread, which allocated it. Dropped on the actors' thread, the items
//! cost it their drop and a cross-thread free each (the allocator then queues the block for
//! the caller's thread to collect); measured, BENCHMARKS.md.
//!
//! Must never: let a reply answer twice, or leave the caller waiting for a reply that was
//! dropped: a reply dropped unanswered (its message never delivered, or its actor stopped)
//! counts as answered and leaves its commands without answers, which the caller reports as
//! `outcome_unknown`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use cells::ledger::CommandResult;

use crate::account::Item;

struct State {
    /// Commands in the batch (every index answered is below it).
    commands: usize,
    answered: Vec<(usize, CommandResult)>,
    /// Item lists the actors are done with, for the caller to drop (at most one per reply).
    spent: Vec<Vec<Item>>,
    /// Replies handed out and not yet answered or dropped.
    outstanding: usize,
    waker: Option<Waker>,
}

/// The answers of one batch.
pub struct BatchAnswers {
    state: Mutex<State>,
}

impl BatchAnswers {
    /// Room for the answers of a batch of `commands` commands, no reply handed out yet.
    pub fn new(commands: usize) -> Arc<BatchAnswers> {
        Arc::new(BatchAnswers {
            state: Mutex::new(State {
                commands,
                answered: Vec::with_capacity(commands),
                spent: Vec::with_capacity(commands),
                outstanding: 0,
                waker: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the list half-written in a way that
        // matters: every answer is pushed whole.
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
    /// answers, `(command index, result)` (none for a command whose reply was dropped),
    /// and drops the item lists the actors handed back on the caller's thread.
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
    /// Another reply for part of this one's commands (an actor that commits them in more
    /// than one commit answers each part when its commit is durable). The batch resolves
    /// once both have answered or been dropped.
    pub fn share(&self) -> Reply {
        match &self.answers {
            Some(answers) => answers.reply(),
            None => Reply { answers: None },
        }
    }

    /// Answers `items` with `results`, `(index, result)` pairs of their indexes in order
    /// (at most one per item: an item left without one stays unanswered), and keeps the
    /// items for the caller to drop.
    pub(crate) fn answer(
        mut self,
        items: Vec<Item>,
        results: impl IntoIterator<Item = (usize, CommandResult)>,
    ) {
        let Some(answers) = self.answers.take() else {
            return;
        };
        let mut state = answers.lock();
        let commands = state.commands;
        let mut answered = 0;
        for (index, result) in results {
            assert!(
                index < commands,
                "an actor answers only indexes of its batch"
            );
            answered += 1;
            // Each index is answered at most once (the caller checks), so the list never
            // outgrows the room `new` made for it.
            state.answered.push((index, result));
        }
        assert!(answered <= items.len(), "at most one answer per item");
        if items.capacity() > 0 {
            // One list per reply, and the replies are bounded by the batch's commands.
            state.spent.push(items);
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

/// Item lists whose lines are asked for ahead of their drop (see [`drop_spent`]).
const SPENT_AHEAD: usize = 4;

/// Drops the item lists the actors handed back, asking for the lines of each list a few
/// lists ahead of its drop: each list lies apart from the others and was written long
/// enough ago to have left the cache, and a drop reads every item (its ids may own memory),
/// so the drops otherwise wait for one miss after another.
fn drop_spent(spent: Vec<Vec<Item>>) {
    let prefetch = |items: &Vec<Item>| Item::prefetch_first(items);
    crate::account::each_prefetching_ahead(spent, SPENT_AHEAD, prefetch, drop);
}

/// See [`BatchAnswers::all`].
pub struct AllAnswered {
    answers: Arc<BatchAnswers>,
}

impl Future for AllAnswered {
    type Output = Vec<(usize, CommandResult)>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.answers.lock();
        if state.outstanding == 0 {
            let answered = std::mem::take(&mut state.answered);
            let spent = std::mem::take(&mut state.spent);
            drop(state);
            drop_spent(spent);
            return Poll::Ready(answered);
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
    use crate::account::Work;
    use cells::ledger::ErrorCode;
    use futures::executor::block_on;

    type Waiter = std::thread::JoinHandle<Vec<(usize, CommandResult)>>;

    /// Waits for every answer of the batch on a thread of its own.
    fn wait_in_thread(answers: &Arc<BatchAnswers>) -> Waiter {
        let answers = Arc::clone(answers);
        std::thread::spawn(move || block_on(answers.all()))
    }

    /// Answers `reply` with `(index, result)` pairs, handing back one item per pair.
    fn answer(reply: Reply, pairs: impl IntoIterator<Item = (usize, CommandResult)>) {
        let pairs: Vec<(usize, CommandResult)> = pairs.into_iter().collect();
        let items = pairs
            .iter()
            .map(|(index, _)| Item {
                index: *index,
                work: Work::Net,
                settled: None,
            })
            .collect();
        reply.answer(items, pairs);
    }

    /// The waiter's answers, by command index.
    fn joined_in_order(waiter: Waiter) -> Vec<(usize, CommandResult)> {
        let mut answered = waiter.join().unwrap();
        answered.sort_by_key(|(index, _)| *index);
        answered
    }

    #[test]
    fn every_reply_answers_or_is_dropped_before_the_batch_resolves() {
        let answers = BatchAnswers::new(4);
        let first = answers.reply();
        let second = answers.reply();
        let third = answers.reply();
        let waiter = wait_in_thread(&answers);
        answer(
            first,
            [
                (0, Err(ErrorCode::Overloaded)),
                (2, Err(ErrorCode::NotOwner)),
            ],
        );
        drop(second);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "resolved with a reply outstanding");
        answer(third, [(3, Err(ErrorCode::UnknownAccount))]);
        assert_eq!(
            joined_in_order(waiter),
            vec![
                (0, Err(ErrorCode::Overloaded)),
                (2, Err(ErrorCode::NotOwner)),
                (3, Err(ErrorCode::UnknownAccount)),
            ]
        );
    }

    #[test]
    fn a_share_of_a_reply_is_waited_for_like_any_reply() {
        let answers = BatchAnswers::new(3);
        let reply = answers.reply();
        let share = reply.share();
        let waiter = wait_in_thread(&answers);
        answer(share, [(0, Err(ErrorCode::Overloaded))]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            !waiter.is_finished(),
            "resolved before the first reply answered"
        );
        answer(
            reply,
            [(1, Err(ErrorCode::NotOwner)), (2, Err(ErrorCode::NotOwner))],
        );
        assert_eq!(
            joined_in_order(waiter),
            vec![
                (0, Err(ErrorCode::Overloaded)),
                (1, Err(ErrorCode::NotOwner)),
                (2, Err(ErrorCode::NotOwner)),
            ]
        );
    }

    #[test]
    fn the_items_answered_are_kept_for_the_caller_and_dropped_when_it_resolves() {
        let answers = BatchAnswers::new(3);
        let (first, second) = (answers.reply(), answers.reply());
        answer(first, [(0, Err(ErrorCode::Overloaded))]);
        answer(
            second,
            [(1, Err(ErrorCode::NotOwner)), (2, Err(ErrorCode::NotOwner))],
        );
        let kept: Vec<usize> = answers.lock().spent.iter().map(Vec::len).collect();
        assert_eq!(kept, vec![1, 2], "one list per reply, whole");
        assert_eq!(block_on(answers.all()).len(), 3);
        assert!(
            answers.lock().spent.is_empty(),
            "the caller dropped the lists when the batch resolved"
        );
    }

    #[test]
    fn a_batch_without_replies_resolves_at_once() {
        let answers = BatchAnswers::new(2);
        assert_eq!(block_on(answers.all()), vec![]);
    }
}
