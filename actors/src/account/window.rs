//! The commit window of an arbiter thread: how many account commits the actors of one
//! thread may have in flight at once, and the queue of actors waiting for a place.
//!
//! Owns: the places taken, the limit, and the queues of waiting actors, per thread (every
//! actor of an arbiter runs on its thread, so no lock is needed).
//!
//! Why: under full load thousands of actors each had a commit in flight. A commit then
//! waited tens of milliseconds in the store's queue (Little's law: commits in flight over
//! commits per second), while most actors committed one or two items at a time. With the
//! window full, an actor keeps taking items while it waits and commits them all when its
//! turn comes: fewer, larger commits, and a commit's own latency bounded by what the window
//! lets queue in the store. While the window has room (light load) an actor commits at
//! once, as before.
//!
//! The limit adapts to what commits cost, within the bounds of
//! [`crate::config::CommitWindow`]. Small commits (one item each) need many places to keep
//! both cores busy; large ones need few to keep their latency down.
//! - The first commit slower than [`LATENCY_HIGH`] shrinks it by a quarter at once, and
//!   starts a round (as many commits as the new limit) in which no other commit shrinks it:
//!   those were mostly sent before the cut.
//! - A round that ends without a cut, whose slowest commit stayed under [`LATENCY_LOW`],
//!   grows it by an eighth, but only if the window was full at some point of the round (an
//!   actor had to wait). Growing a quarter on fast rounds with room to spare took the limit
//!   from 46 to 879 in 25 ms as load began; the full load then met 879 commits in flight,
//!   and shrinking a quarter per round of 600–900 slow commits left 3,000 commits over 8 ms
//!   in the run's first 300 ms (BENCHMARKS.md round 18). Growing by an eighth overshoots
//!   less while the store's queue builds up behind fast early commits.
//!
//! An actor with at least [`LARGE_COMMIT_ITEMS`] items waiting (a hot account) queues
//! ahead of the others: its commit carries many items for its one place, and behind a
//! queue of thousands of one-item commits it would get its turn once per lap, which caps
//! a hot account's postings per second. So that hot accounts cannot starve the others,
//! at least one in every [`LARGE_STREAK_MAX`]` + 1` places granted goes to the oldest
//! small commit, when one waits.
//!
//! Must never: lose a place (a [`Place`] gives its place back when dropped, however the
//! commit ends, the actor's stop included; a granted [`Ticket`] dropped unused passes its
//! place on), let an actor overtake one queued before it in its class, or leave a queued
//! actor unwoken when a place frees.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::{HashSet, HashSetExt};

use super::Waker;
use crate::config::CommitWindow;
use crate::registry::Live;

/// A commit that took longer shrinks the limit (once per round).
const LATENCY_HIGH: Duration = Duration::from_millis(5);
/// A full round whose slowest commit took less grows it.
const LATENCY_LOW: Duration = Duration::from_millis(2);

/// Items an actor has waiting from which its commit queues ahead of smaller ones.
const LARGE_COMMIT_ITEMS: usize = 256;
/// Places granted to large commits in a row, while small ones wait, before one goes to a
/// small one.
const LARGE_STREAK_MAX: usize = 8;

pub(crate) struct Window<W> {
    bounds: CommitWindow,
    limit: usize,
    /// Places taken: commits in flight, and places granted and not yet taken.
    taken: usize,
    /// Commits finished in this round, and the slowest of them.
    round_done: usize,
    round_slowest: Duration,
    /// Whether the limit was cut in this round (once per round).
    round_cut: bool,
    /// Whether an actor had to wait for a place in this round (the limit was what held
    /// commits back, so it may grow).
    round_full: bool,
    next_ticket: u64,
    /// Actors waiting for a place with a large commit, oldest first (served first).
    large: VecDeque<(u64, W)>,
    /// Other actors waiting for a place, oldest first.
    waiting: VecDeque<(u64, W)>,
    /// Tickets given a place that their actor has not taken yet.
    granted: HashSet<u64>,
    /// Places granted to large commits in a row while small ones waited.
    large_streak: usize,
}

impl<W: Waker> Window<W> {
    pub(crate) fn new(bounds: CommitWindow) -> Self {
        assert!(
            bounds.is_valid(),
            "commit window bounds out of range: {bounds:?}"
        );
        metrics::gauge!("tessera_actors_commit_window_limit").set(bounds.initial as f64);
        Window {
            bounds,
            limit: bounds.initial,
            taken: 0,
            round_done: 0,
            round_slowest: Duration::ZERO,
            round_cut: false,
            round_full: false,
            next_ticket: 0,
            large: VecDeque::new(),
            waiting: VecDeque::new(),
            granted: HashSet::new(),
            large_streak: 0,
        }
    }

    /// Takes a place for a commit of `items` items: at once if a place is free and nobody
    /// waits, or the place granted to `ticket`. Otherwise queues the actor (once: `ticket`
    /// keeps its place in the queue; ahead of smaller commits when `items` is at least
    /// [`LARGE_COMMIT_ITEMS`]) and returns false.
    pub(crate) fn acquire(
        &mut self,
        ticket: &mut Option<u64>,
        items: usize,
        waker: impl FnOnce() -> W,
    ) -> bool {
        if let Some(number) = ticket {
            if !self.granted.remove(number) {
                return false;
            }
            // The place was counted when it was granted.
            *ticket = None;
            return true;
        }
        if self.large.is_empty() && self.waiting.is_empty() && self.taken < self.limit {
            self.taken += 1;
            return true;
        }
        self.round_full = true;
        let number = self.next_ticket;
        self.next_ticket += 1;
        let queue = if items >= LARGE_COMMIT_ITEMS {
            &mut self.large
        } else {
            &mut self.waiting
        };
        queue.push_back((number, waker()));
        *ticket = Some(number);
        false
    }

    /// A commit that held a place for `elapsed` finished: adapts the limit and hands the
    /// free places on.
    pub(crate) fn finish(&mut self, elapsed: Duration) {
        let before = self.limit;
        if elapsed > LATENCY_HIGH && !self.round_cut {
            self.limit = (self.limit - self.limit / 4).max(self.bounds.min);
            self.start_round();
            self.round_cut = true;
        } else {
            self.round_done += 1;
            self.round_slowest = self.round_slowest.max(elapsed);
            if self.round_done >= self.limit {
                if !self.round_cut && self.round_full && self.round_slowest < LATENCY_LOW {
                    self.limit = (self.limit + self.limit / 8 + 1).min(self.bounds.max);
                }
                self.start_round();
            }
        }
        if self.limit != before {
            metrics::gauge!("tessera_actors_commit_window_limit").set(self.limit as f64);
        }
        self.taken -= 1;
        self.grant();
    }

    fn start_round(&mut self) {
        self.round_done = 0;
        self.round_slowest = Duration::ZERO;
        self.round_cut = false;
        // Actors still waiting keep the window full.
        self.round_full = !self.large.is_empty() || !self.waiting.is_empty();
    }

    /// The actor holding `ticket` gives it up (it stopped, or has nothing to commit).
    pub(crate) fn cancel(&mut self, ticket: u64) {
        if self.granted.remove(&ticket) {
            self.taken -= 1;
            self.grant();
        } else {
            self.large.retain(|(number, _)| *number != ticket);
            self.waiting.retain(|(number, _)| *number != ticket);
        }
    }

    /// Grants free places to the oldest waiting actors that are still alive, large
    /// commits first (but see [`LARGE_STREAK_MAX`]).
    fn grant(&mut self) {
        while self.taken < self.limit {
            let small_turn = self.large_streak >= LARGE_STREAK_MAX || self.large.is_empty();
            let next = if small_turn {
                self.waiting.pop_front().or_else(|| self.large.pop_front())
            } else {
                self.large.pop_front()
            };
            let Some((number, waker)) = next else {
                return;
            };
            self.large_streak = if small_turn || self.waiting.is_empty() {
                0
            } else {
                self.large_streak + 1
            };
            if waker.wake() {
                self.granted.insert(number);
                self.taken += 1;
            }
        }
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.large.len() + self.waiting.len()
    }
}

thread_local! {
    /// The thread's window, made with the bounds of the first ledger that commits here.
    static WINDOW: RefCell<Option<Window<Arc<Live>>>> = const { RefCell::new(None) };
}

/// A place in the thread's window, held for the length of one commit; dropping it frees
/// the place.
#[must_use]
pub(crate) struct Place {
    since: Instant,
}

impl Place {
    /// When the place was taken: the start of its commit, which the window's latency
    /// rounds and the actor's commit latency both count from.
    pub(crate) fn since(&self) -> Instant {
        self.since
    }

    /// Gives the place back after a commit that took `elapsed` (the latency the actor
    /// records too: one clock read for both).
    pub(crate) fn finish(self, elapsed: Duration) {
        std::mem::forget(self);
        give_back(elapsed);
    }
}

/// Frees a place held for `elapsed` in the thread's window.
fn give_back(elapsed: Duration) {
    // (A thread being torn down has no window left to give back to.)
    let _ = WINDOW.try_with(|window| {
        if let Some(window) = window.borrow_mut().as_mut() {
            window.finish(elapsed);
        }
    });
}

/// An actor's place in the thread's queue; dropped unused, it leaves the queue (or passes
/// on the place it was granted).
pub(crate) struct Ticket(u64);

/// Takes a place in the thread's window for a commit of `items` items (see
/// [`Window::acquire`]); `None`: the actor is queued, and woken when a place is granted.
pub(crate) fn acquire(
    bounds: CommitWindow,
    ticket: &mut Option<Ticket>,
    items: usize,
    waker: impl FnOnce() -> Arc<Live>,
) -> Option<Place> {
    let queued_before = ticket.as_ref().map(|ticket| ticket.0);
    let mut number = queued_before;
    let acquired = WINDOW.with_borrow_mut(|window| {
        window
            .get_or_insert_with(|| Window::new(bounds))
            .acquire(&mut number, items, waker)
    });
    // (Outside the borrow: dropping a ticket borrows the window.)
    match (queued_before, number) {
        (None, Some(number)) => {
            metrics::counter!("tessera_actors_commit_window_waits_total").increment(1);
            *ticket = Some(Ticket(number));
        }
        // Spent: its place is now the commit's, nothing to cancel.
        (Some(_), None) => std::mem::forget(ticket.take()),
        // Still queued, or never queued.
        _ => {}
    }
    acquired.then(|| Place {
        since: Instant::now(),
    })
}

impl Drop for Place {
    /// A place dropped without [`Place::finish`] (its commit's future dropped with a
    /// stopping actor) is given back all the same.
    fn drop(&mut self) {
        give_back(self.since.elapsed());
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let number = self.0;
        let _ = WINDOW.try_with(|window| {
            if let Some(window) = window.borrow_mut().as_mut() {
                window.cancel(number);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A waker that records its wake-ups and can stop.
    #[derive(Clone)]
    struct Fake {
        id: usize,
        woken: Rc<RefCell<Vec<usize>>>,
        alive: Rc<Cell<bool>>,
    }

    impl Waker for Fake {
        fn wake(&self) -> bool {
            if self.alive.get() {
                self.woken.borrow_mut().push(self.id);
            }
            self.alive.get()
        }
    }

    fn fakes(n: usize) -> (Vec<Fake>, Rc<RefCell<Vec<usize>>>) {
        let woken = Rc::new(RefCell::new(Vec::new()));
        let fakes = (0..n)
            .map(|id| Fake {
                id,
                woken: Rc::clone(&woken),
                alive: Rc::new(Cell::new(true)),
            })
            .collect();
        (fakes, woken)
    }

    /// Fills the window, queues three actors (the last one large), and frees places: the
    /// large one goes first, then the others in their order.
    #[test]
    fn places_go_to_large_commits_first_then_in_order() {
        let (actors, woken) = fakes(3);
        let mut window = Window::new(CommitWindow::default());
        for _ in 0..window.limit {
            assert!(window.acquire(&mut None, 1, || unreachable!("a place is free")));
        }
        let mut tickets = vec![None; 3];
        for (index, items) in [1, 1, LARGE_COMMIT_ITEMS].into_iter().enumerate() {
            let actor = actors[index].clone();
            assert!(!window.acquire(&mut tickets[index], items, || actor));
        }
        for _ in 0..3 {
            window.finish(Duration::from_millis(3));
        }
        assert_eq!(*woken.borrow(), vec![2, 0, 1]);
        for ticket in &mut tickets {
            assert!(window.acquire(ticket, 1, || unreachable!("granted")));
            assert!(ticket.is_none(), "the ticket is spent");
        }
    }

    /// However many large commits wait, a small one gets a place within
    /// `LARGE_STREAK_MAX + 1` grants.
    #[test]
    fn large_commits_do_not_starve_small_ones() {
        let (actors, woken) = fakes(LARGE_STREAK_MAX + 3);
        let small = LARGE_STREAK_MAX + 2;
        let mut window = Window::new(CommitWindow::default());
        window.limit = 1;
        assert!(window.acquire(&mut None, 1, || unreachable!()));
        let mut tickets = vec![None; actors.len()];
        assert!(!window.acquire(&mut tickets[small], 1, || actors[small].clone()));
        for large in 0..small {
            let actor = actors[large].clone();
            assert!(!window.acquire(&mut tickets[large], LARGE_COMMIT_ITEMS, || actor));
        }
        for _ in 0..=LARGE_STREAK_MAX {
            window.finish(Duration::from_millis(3));
            let last = *woken.borrow().last().expect("a place was granted");
            assert!(window.acquire(&mut tickets[last], 1, || unreachable!()));
        }
        assert_eq!(woken.borrow().len(), LARGE_STREAK_MAX + 1);
        assert_eq!(
            woken.borrow()[LARGE_STREAK_MAX],
            small,
            "the small one's turn"
        );
        assert!(woken.borrow()[..LARGE_STREAK_MAX]
            .iter()
            .all(|id| *id < small));
    }

    /// The bounds a ledger accepts: at least one place, `min <= initial <= max`, and no
    /// more than `COMMIT_WINDOW_MAX`.
    #[test]
    fn window_bounds_are_checked() {
        assert!(CommitWindow::default().is_valid());
        assert!(CommitWindow::fixed(1).is_valid());
        assert!(!CommitWindow::fixed(0).is_valid());
        assert!(!CommitWindow::fixed(crate::config::COMMIT_WINDOW_MAX + 1).is_valid());
        let inverted = CommitWindow {
            initial: 8,
            min: 16,
            max: 32,
        };
        assert!(!inverted.is_valid());
    }

    /// A newcomer does not take a place while others wait, even when one is free.
    #[test]
    fn a_newcomer_queues_behind_those_waiting() {
        let (actors, woken) = fakes(2);
        let mut window = Window::new(CommitWindow::default());
        window.limit = 1;
        assert!(window.acquire(&mut None, 1, || unreachable!()));
        let mut first = None;
        assert!(!window.acquire(&mut first, 1, || actors[0].clone()));
        window.finish(Duration::from_millis(3));
        assert_eq!(*woken.borrow(), vec![0]);
        let mut second = None;
        assert!(!window.acquire(&mut second, 1, || actors[1].clone()));
        assert!(window.acquire(&mut first, 1, || unreachable!()));
    }

    /// Finishes a round of the window's limit in commits that took `latency`; with `full`,
    /// one more actor had to wait for a place meanwhile (it gets one and finishes too).
    fn round(window: &mut Window<Fake>, latency: Duration, full: bool) {
        let (actors, _) = fakes(1);
        let n = window.limit;
        for _ in 0..n {
            assert!(window.acquire(&mut None, 1, || unreachable!()));
        }
        let mut ticket = None;
        if full {
            assert!(!window.acquire(&mut ticket, 1, || actors[0].clone()));
        }
        for _ in 0..n {
            window.finish(latency);
        }
        if full {
            assert!(window.acquire(&mut ticket, 1, || unreachable!("granted")));
            window.finish(latency);
        }
    }

    /// Slow commits shrink the limit to its floor, fast rounds of a full window grow it to
    /// its ceiling, and rounds in between leave it.
    #[test]
    fn the_limit_follows_commit_latency() {
        let mut window: Window<Fake> = Window::new(CommitWindow::default());
        for _ in 0..64 {
            round(&mut window, LATENCY_HIGH + Duration::from_millis(1), true);
        }
        assert_eq!(window.limit, CommitWindow::default().min);
        let middle = (LATENCY_LOW + LATENCY_HIGH) / 2;
        round(&mut window, middle, true);
        round(&mut window, middle, true);
        assert_eq!(window.limit, CommitWindow::default().min);
        for _ in 0..64 {
            round(&mut window, Duration::from_micros(100), true);
        }
        assert_eq!(window.limit, CommitWindow::default().max);
    }

    /// Fast commits while the window has room to spare (nobody waits) say nothing about a
    /// larger limit: it stays.
    #[test]
    fn the_limit_grows_only_when_the_window_held_commits_back() {
        let mut window: Window<Fake> = Window::new(CommitWindow::default());
        let start = window.limit;
        for _ in 0..16 {
            round(&mut window, Duration::from_micros(100), false);
        }
        assert_eq!(window.limit, start);
        round(&mut window, Duration::from_micros(100), true);
        // The round the actor waited in grew it.
        assert!(window.limit > start, "{} places", window.limit);
    }

    /// The first slow commit cuts the limit at once; the commits of the round that follows
    /// (mostly sent before the cut) do not cut it again; the next slow one after it does.
    #[test]
    fn a_slow_commit_cuts_the_limit_once_per_round() {
        let mut window: Window<Fake> = Window::new(CommitWindow::default());
        let start = window.limit;
        for _ in 0..start {
            assert!(window.acquire(&mut None, 1, || unreachable!()));
        }
        let slow = LATENCY_HIGH + Duration::from_millis(1);
        window.finish(slow);
        let cut = start - start / 4;
        assert_eq!(window.limit, cut);
        for _ in 0..cut {
            window.finish(slow);
        }
        assert_eq!(window.limit, cut, "cut once in a round");
        window.finish(slow);
        assert_eq!(window.limit, cut - cut / 4);
    }

    proptest! {
        /// Random acquires, finishes, cancels and stops never lose or invent a place:
        /// places taken never exceed the limit by more than the limit shrank, every waiting
        /// actor is woken once a place frees, and when everything is finished the window is
        /// empty.
        #[test]
        fn no_place_is_lost(
            ops in proptest::collection::vec((0u8..4, 0usize..8, any::<bool>(), 0u64..8), 1..300),
        ) {
            let (actors, woken) = fakes(8);
            let mut window = Window::new(CommitWindow::default());
            window.limit = CommitWindow::default().min;
            let mut tickets: Vec<Option<u64>> = vec![None; 8];
            let mut holding = [0usize; 8];
            for (op, who, large, millis) in ops {
                let items = if large { LARGE_COMMIT_ITEMS } else { 1 };
                match op {
                    0 | 1 if actors[who].alive.get() => {
                        let actor = actors[who].clone();
                        if window.acquire(&mut tickets[who], items, || actor) {
                            holding[who] += 1;
                        }
                    }
                    2 => {
                        if let Some(actor) = (0..8).find(|a| holding[*a] > 0) {
                            holding[actor] -= 1;
                            window.finish(Duration::from_millis(millis));
                        }
                    }
                    _ => {
                        // The actor stops: its ticket goes with it.
                        actors[who].alive.set(false);
                        if let Some(ticket) = tickets[who].take() {
                            window.cancel(ticket);
                        }
                    }
                }
                let granted = window.granted.len();
                prop_assert_eq!(window.taken, holding.iter().sum::<usize>() + granted);
                if window.taken < window.limit {
                    prop_assert_eq!(window.waiting(), 0, "a free place with actors waiting");
                }
            }
            // Everything in flight finishes; granted actors take and finish their places.
            for _ in 0..holding.iter().sum::<usize>() {
                window.finish(Duration::ZERO);
            }
            loop {
                let mut progressed = false;
                for ticket in tickets.iter_mut() {
                    if ticket.is_some() && window.acquire(ticket, 1, || unreachable!()) {
                        window.finish(Duration::ZERO);
                        progressed = true;
                    }
                }
                if !progressed {
                    break;
                }
            }
            prop_assert_eq!(window.taken, 0);
            prop_assert_eq!(window.waiting(), 0);
            prop_assert!(woken.borrow().iter().all(|id| *id < 8));
        }
    }
}
