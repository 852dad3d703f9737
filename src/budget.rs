//! Budgets: cost units (tokens, API calls, cents) a run may spend.
//!
//! A budget travels with a task: pipeline stages spend it one after another, router
//! branches of the same request share it. Agents spend with [`crate::Ctx::spend`];
//! any stage can also charge a fixed cost per attempt. Spending past the limit fails
//! the spend with [`BudgetExceeded`], which as an [`crate::AgentError`] rejects the
//! task (no retry: more attempts would only spend more).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A budget shared by everything one run does.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    spent: AtomicU64,
    refused: Mutex<Option<BudgetExceeded>>,
}

/// A spend that would take the budget past its limit. The units were not spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetExceeded {
    /// The budget's limit.
    pub limit: u64,
    /// Spent before this attempt.
    pub spent: u64,
    /// What was asked for.
    pub asked: u64,
}

impl fmt::Display for BudgetExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "budget exhausted: {} units asked with {} of {} already spent; raise the budget or cut the work",
            self.asked, self.spent, self.limit
        )
    }
}

impl From<BudgetExceeded> for crate::AgentError {
    fn from(e: BudgetExceeded) -> Self {
        crate::AgentError::reject(e.to_string())
    }
}

impl Budget {
    /// A budget of `limit` units.
    pub fn new(limit: u64) -> Self {
        Budget {
            limit,
            spent: AtomicU64::new(0),
            refused: Mutex::new(None),
        }
    }

    /// Spend `units`, or refuse if that would pass the limit.
    ///
    /// # Errors
    /// [`BudgetExceeded`]; nothing is spent then.
    pub fn spend(&self, units: u64) -> Result<(), BudgetExceeded> {
        let mut cur = self.spent.load(Ordering::Acquire);
        loop {
            let next = cur.saturating_add(units);
            if next > self.limit {
                let e = BudgetExceeded {
                    limit: self.limit,
                    spent: cur,
                    asked: units,
                };
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return Err(e);
            }
            match self
                .spent
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => cur = now,
            }
        }
        Ok(())
    }

    /// The limit.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Units spent so far.
    pub fn spent(&self) -> u64 {
        self.spent.load(Ordering::Acquire)
    }

    /// Units left.
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.spent())
    }

    /// The last refused spend, if any: the budget is exhausted for what was asked.
    pub fn refusal(&self) -> Option<BudgetExceeded> {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_until_the_limit_then_refuses_and_remembers() {
        let b = Budget::new(10);
        b.spend(4).unwrap();
        b.spend(6).unwrap();
        let e = b.spend(1).unwrap_err();
        let expected = BudgetExceeded {
            limit: 10,
            spent: 10,
            asked: 1,
        };
        assert_eq!(e, expected);
        assert_eq!(b.refusal(), Some(expected));
        assert_eq!(b.remaining(), 0);
    }
}
