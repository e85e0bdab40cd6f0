//! Traffic shift plans: moving cells from DC x to DC y a slice at a time.
//!
//! Owns the plan record (stored at `keys::shift_plan(name)`), its validation, the stage
//! arithmetic and the moves between two positions of a plan. A plan has stages (default
//! `whitelist, 1/256, 1/8, 1/4, 1/2, 1`); being at position `k` means stages `0..k` are
//! done. Stage `f` moves the first ⌈f·256⌉ slots of every cell of the plan; the
//! `whitelist` stage moves the plan's whitelisted users. A user moved at one stage stays
//! moved at every later stage: [`ShiftPlan::owner_at`] is monotone in the position.
//!
//! Must never: move a slot outside the plan's cells; produce moves that are not exactly
//! the difference between two positions; do I/O (the executor lives in `actors::shift`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{DcId, UserId};
use crate::slot::{slot_of, Slot, CELL_COUNT, SLOTS_PER_CELL};

/// Most stages of a plan.
pub const STAGES_MAX: usize = 16;
/// Most whitelisted users of a plan (one ownership change moves them all).
pub const PLAN_WHITELIST_MAX: usize = crate::ownership::CHANGE_USERS_MAX;
/// Most bytes of a plan's name.
pub const PLAN_NAME_BYTES_MAX: usize = 64;

/// One stage of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// The plan's whitelisted users only.
    Whitelist,
    /// The first ⌈num/den · 256⌉ slots of every cell.
    Fraction { num: u16, den: u16 },
}

/// Why a plan or a request about one was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("stage {0:?} is not `whitelist`, a fraction like `1/8` or `1`")]
    BadStage(String),
    #[error("stages must move more slots each time, with `whitelist` only first: {0}")]
    StagesNotIncreasing(String),
    #[error("a plan has 1 to {STAGES_MAX} stages")]
    StageCount,
    #[error("cell {0} is not a cell number 0..=255")]
    BadCell(u32),
    #[error("a plan needs at least one cell, each named once")]
    Cells,
    #[error("the plan moves from {0} to itself")]
    SameDc(String),
    #[error("plan name {0:?} must be 1-{PLAN_NAME_BYTES_MAX} characters of [A-Za-z0-9._:-]")]
    BadName(String),
    #[error("plan {name} is at stage {position} of {stages}; {what}")]
    Position {
        name: String,
        position: usize,
        stages: usize,
        what: &'static str,
    },
    #[error("plan {0} is paused; resume it first")]
    Paused(String),
    #[error("a plan whitelists at most {PLAN_WHITELIST_MAX} users")]
    WhitelistFull,
    #[error("user {0} is not in the plan's cells")]
    UserOutsidePlan(String),
}

impl Stage {
    /// `whitelist`, `1`, `1/1`, `1/256`, …
    pub fn parse(text: &str) -> Result<Stage, PlanError> {
        let bad = || PlanError::BadStage(text.to_string());
        let text = text.trim();
        if text == "whitelist" {
            return Ok(Stage::Whitelist);
        }
        let (num, den) = match text.split_once('/') {
            Some((num, den)) => (num.trim(), den.trim()),
            None => (text, "1"),
        };
        let num: u16 = num.parse().map_err(|_| bad())?;
        let den: u16 = den.parse().map_err(|_| bad())?;
        if num == 0 || den == 0 || num > den {
            return Err(bad());
        }
        Ok(Stage::Fraction { num, den })
    }

    /// Slots of each cell moved once this stage is done.
    pub fn slots(self) -> u32 {
        match self {
            Stage::Whitelist => 0,
            Stage::Fraction { num, den } => {
                (u32::from(num) * SLOTS_PER_CELL).div_ceil(u32::from(den))
            }
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stage::Whitelist => f.write_str("whitelist"),
            Stage::Fraction { num, den } if num == den => f.write_str("1"),
            Stage::Fraction { num, den } => write!(f, "{num}/{den}"),
        }
    }
}

/// The default stages: `whitelist, 1/256, 1/8, 1/4, 1/2, 1`.
pub fn default_stages() -> Vec<Stage> {
    ["whitelist", "1/256", "1/8", "1/4", "1/2", "1"]
        .iter()
        .map(|text| Stage::parse(text).expect("valid default stage"))
        .collect()
}

/// A shift plan and where it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShiftPlan {
    pub name: String,
    /// Cell numbers, ascending.
    pub cells: Vec<u16>,
    pub from: DcId,
    pub to: DcId,
    pub stages: Vec<Stage>,
    /// Stages `0..position` are done (0: nothing moved).
    pub position: usize,
    pub paused: bool,
    pub whitelist: Vec<UserId>,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub updated_by: String,
}

/// What moving a plan between two positions changes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moves {
    /// Runs of consecutive slots `(first, last)`, all moving `slots_from → slots_to`.
    pub runs: Vec<(u16, u16)>,
    pub slots_from: Option<DcId>,
    pub slots_to: Option<DcId>,
    /// `(user, expected whitelist owner, new whitelist owner or None to remove)`.
    pub users: Vec<(UserId, Option<DcId>, Option<DcId>)>,
}

impl Moves {
    pub fn slot_count(&self) -> usize {
        self.runs
            .iter()
            .map(|(first, last)| usize::from(last - first) + 1)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.users.is_empty()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= PLAN_NAME_BYTES_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

impl ShiftPlan {
    /// A new plan at position 0; checks every field.
    pub fn new(
        name: &str,
        mut cells: Vec<u16>,
        from: DcId,
        to: DcId,
        stages: Vec<Stage>,
        now_ms: u64,
        who: &str,
    ) -> Result<ShiftPlan, PlanError> {
        if !valid_name(name) {
            return Err(PlanError::BadName(name.to_string()));
        }
        if let Some(bad) = cells.iter().find(|c| u32::from(**c) >= CELL_COUNT) {
            return Err(PlanError::BadCell(u32::from(*bad)));
        }
        let count = cells.len();
        cells.sort_unstable();
        cells.dedup();
        if cells.is_empty() || cells.len() != count {
            return Err(PlanError::Cells);
        }
        if from == to {
            return Err(PlanError::SameDc(from.to_string()));
        }
        if stages.is_empty() || stages.len() > STAGES_MAX {
            return Err(PlanError::StageCount);
        }
        for (index, pair) in stages.windows(2).enumerate() {
            let increasing = pair[1] != Stage::Whitelist && pair[1].slots() > pair[0].slots();
            if !increasing {
                return Err(PlanError::StagesNotIncreasing(format!(
                    "stage {} ({}) after {}",
                    index + 1,
                    pair[1],
                    pair[0]
                )));
            }
        }
        Ok(ShiftPlan {
            name: name.to_string(),
            cells,
            from,
            to,
            stages,
            position: 0,
            paused: false,
            whitelist: Vec::new(),
            created_ms: now_ms,
            updated_ms: now_ms,
            updated_by: who.to_string(),
        })
    }

    /// The stage name at `position` (`none` before the first).
    pub fn stage_name(&self, position: usize) -> String {
        match position {
            0 => "none".into(),
            p => self.stages[p - 1].to_string(),
        }
    }

    /// The position a stage name stands for (`none` = 0, else after that stage).
    pub fn position_of(&self, name: &str) -> Option<usize> {
        if name == "none" || name == "0" {
            return Some(0);
        }
        let stage = Stage::parse(name).ok()?;
        self.stages
            .iter()
            .position(|s| {
                s.slots() == stage.slots()
                    && (*s == Stage::Whitelist) == (stage == Stage::Whitelist)
            })
            .map(|index| index + 1)
    }

    /// Slots of each cell moved at `position`.
    pub fn slots_at(&self, position: usize) -> u32 {
        self.stages[..position]
            .iter()
            .map(|stage| stage.slots())
            .max()
            .unwrap_or(0)
    }

    /// Whether the whitelist stage is done at `position`.
    pub fn whitelist_active(&self, position: usize) -> bool {
        self.stages[..position].contains(&Stage::Whitelist)
    }

    /// Whether `user`'s slot is in one of the plan's cells.
    pub fn covers(&self, user: &UserId) -> bool {
        let cell = slot_of(user).cell().index();
        self.cells.binary_search(&(cell as u16)).is_ok()
    }

    /// The DC the plan gives `user` at `position`; None for users outside the plan.
    pub fn owner_at(&self, position: usize, user: &UserId) -> Option<&DcId> {
        if !self.covers(user) {
            return None;
        }
        let in_cell = slot_of(user).index() % SLOTS_PER_CELL;
        let moved = in_cell < self.slots_at(position)
            || (self.whitelist_active(position) && self.whitelist.contains(user));
        Some(if moved { &self.to } else { &self.from })
    }

    /// The moves from position `from` to position `to` (either direction).
    pub fn moves(&self, from: usize, to: usize) -> Moves {
        assert!(from <= self.stages.len() && to <= self.stages.len());
        let (low, high) = (self.slots_at(from.min(to)), self.slots_at(from.max(to)));
        let forward = to > from;
        let mut moves = Moves::default();
        if high > low {
            for cell in &self.cells {
                let base = u32::from(*cell) * SLOTS_PER_CELL;
                moves
                    .runs
                    .push(((base + low) as u16, (base + high - 1) as u16));
            }
            let (a, b) = (self.from.clone(), self.to.clone());
            (moves.slots_from, moves.slots_to) = if forward {
                (Some(a), Some(b))
            } else {
                (Some(b), Some(a))
            };
        }
        let (was, will) = (self.whitelist_active(from), self.whitelist_active(to));
        if was != will {
            for user in &self.whitelist {
                moves.users.push(if will {
                    (user.clone(), None, Some(self.to.clone()))
                } else {
                    (user.clone(), Some(self.to.clone()), None)
                });
            }
        }
        moves
    }

    /// The slots of `moves` one by one.
    pub fn slots_of(moves: &Moves) -> impl Iterator<Item = Slot> + '_ {
        moves
            .runs
            .iter()
            .flat_map(|(first, last)| (*first..=*last).map(Slot::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dc(name: &str) -> DcId {
        DcId::new(name).unwrap()
    }

    fn plan(cells: Vec<u16>) -> ShiftPlan {
        ShiftPlan::new(
            "p",
            cells,
            dc("dc-a"),
            dc("dc-b"),
            default_stages(),
            0,
            "test",
        )
        .unwrap()
    }

    #[test]
    fn stages_parse_and_count_slots() {
        let slots: Vec<u32> = default_stages().iter().map(|s| s.slots()).collect();
        assert_eq!(slots, vec![0, 1, 32, 64, 128, 256]);
        assert_eq!(Stage::parse("1/1").unwrap().to_string(), "1");
        assert_eq!(Stage::parse("3/1000").unwrap().slots(), 1, "rounded up");
        for bad in ["", "0", "2", "1/0", "x", "3/2", "-1/2"] {
            assert!(Stage::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plans_are_validated() {
        let make = |cells: Vec<u16>, stages: &[&str], to: &str| {
            let stages = stages.iter().map(|s| Stage::parse(s).unwrap()).collect();
            ShiftPlan::new("p", cells, dc("dc-a"), dc(to), stages, 0, "t")
        };
        assert!(make(vec![1], &["1/2", "1"], "dc-b").is_ok());
        assert_eq!(make(vec![], &["1"], "dc-b"), Err(PlanError::Cells));
        assert_eq!(make(vec![1, 1], &["1"], "dc-b"), Err(PlanError::Cells));
        assert_eq!(
            make(vec![256], &["1"], "dc-b"),
            Err(PlanError::BadCell(256))
        );
        assert!(matches!(
            make(vec![1], &["1/2", "1/4"], "dc-b"),
            Err(PlanError::StagesNotIncreasing(_))
        ));
        assert!(matches!(
            make(vec![1], &["1/2", "whitelist"], "dc-b"),
            Err(PlanError::StagesNotIncreasing(_))
        ));
        assert!(matches!(
            make(vec![1], &["1"], "dc-a"),
            Err(PlanError::SameDc(_))
        ));
        assert!(matches!(
            ShiftPlan::new(
                "bad name",
                vec![1],
                dc("a"),
                dc("b"),
                default_stages(),
                0,
                "t"
            ),
            Err(PlanError::BadName(_))
        ));
    }

    #[test]
    fn moves_are_runs_per_cell() {
        let p = plan(vec![0, 5]);
        let moves = p.moves(0, 3); // whitelist, 1/256, 1/8
        assert_eq!(moves.runs, vec![(0, 31), (5 * 256, 5 * 256 + 31)]);
        assert_eq!(moves.slots_from, Some(dc("dc-a")));
        let back = p.moves(3, 2);
        assert_eq!(back.runs, vec![(1, 31), (5 * 256 + 1, 5 * 256 + 31)]);
        assert_eq!(back.slots_to, Some(dc("dc-a")));
        assert!(p.moves(2, 2).is_empty());
        assert_eq!(p.position_of("1/8"), Some(3));
        assert_eq!(p.position_of("none"), Some(0));
        assert_eq!(p.position_of("1/3"), None);
    }

    proptest! {
        /// For random advance/rollback sequences: applying each step's moves to a model
        /// table gives exactly `owner_at` of the new position for every user; every user's
        /// owner is the source or the target; and owners are monotone in the position.
        #[test]
        fn owners_follow_the_stage(
            cells in proptest::collection::btree_set(0u16..256, 1..4),
            steps in proptest::collection::vec(0usize..=6, 1..12),
            users in proptest::collection::vec("[a-z0-9]{1,12}", 1..60),
            whitelisted in proptest::collection::vec(any::<bool>(), 60),
        ) {
            let mut p = plan(cells.into_iter().collect());
            let users: Vec<UserId> = users.iter().map(|u| UserId::new(u).unwrap()).collect();
            // Whitelisted users may be anywhere; only those in the plan's cells count.
            p.whitelist = users
                .iter()
                .zip(&whitelisted)
                .filter(|(u, w)| **w && p.covers(u))
                .map(|(u, _)| u.clone())
                .collect();
            // A plan lists a user once (the controller refuses a second add).
            p.whitelist.sort();
            p.whitelist.dedup();
            let mut slots: std::collections::HashMap<u32, DcId> = Default::default();
            let mut listed: std::collections::HashMap<UserId, DcId> = Default::default();
            let model_owner = |slots: &std::collections::HashMap<u32, DcId>,
                               listed: &std::collections::HashMap<UserId, DcId>,
                               user: &UserId| {
                listed
                    .get(user)
                    .or_else(|| slots.get(&slot_of(user).index()))
                    .cloned()
                    .unwrap_or_else(|| dc("dc-a"))
            };
            let mut position = 0;
            for target in steps {
                let moves = p.moves(position, target);
                for slot in ShiftPlan::slots_of(&moves) {
                    let current = slots.get(&slot.index()).cloned().unwrap_or_else(|| dc("dc-a"));
                    prop_assert_eq!(Some(&current), moves.slots_from.as_ref(), "slot {} not where the move assumed", slot.index());
                    slots.insert(slot.index(), moves.slots_to.clone().unwrap());
                }
                for (user, expected, new) in &moves.users {
                    prop_assert_eq!(listed.get(user), expected.as_ref());
                    match new {
                        Some(dc) => { listed.insert(user.clone(), dc.clone()); }
                        None => { listed.remove(user); }
                    }
                }
                position = target;
                for user in &users {
                    let model = model_owner(&slots, &listed, user);
                    match p.owner_at(position, user) {
                        Some(owner) => prop_assert_eq!(owner, &model),
                        None => prop_assert_eq!(&model, &dc("dc-a")),
                    }
                    prop_assert!(model == dc("dc-a") || model == dc("dc-b"));
                }
            }
            for user in &users {
                let mut moved = false;
                for position in 0..=p.stages.len() {
                    let at_target = p.owner_at(position, user) == Some(&p.to);
                    prop_assert!(!moved || at_target, "{} moved back at a later stage", user);
                    moved |= at_target;
                }
            }
        }
    }
}
