//! Stacks kept between windows of a continuous run, bounded by age: a stack no window has
//! named for a while is let go, here and in the kernel's record of stacks stored (so that
//! the next sample with it stores it again). Without it, a host-wide agent kept every stack
//! the host ever ran, in its memory and in the kernel's.

use std::collections::{HashMap, HashSet};

/// Windows a stack may go unnamed before it is let go (a minute at the default interval).
const IDLE_WINDOWS: u32 = 4;

/// When each kept stack was last named, by window.
#[derive(Default)]
pub(super) struct StackAges {
    window: u32,
    user: HashMap<u32, u32>,
    kernel: HashMap<u32, u32>,
    /// Let go of in the kernel at the last window; here at the next, unless named again: a
    /// sample may have found one stored just before, and be counted after that window.
    retiring: Retired,
}

/// Stack ids, user and kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Retired {
    pub(super) user: Vec<u32>,
    pub(super) kernel: Vec<u32>,
}

impl StackAges {
    /// A window is cut that names these stacks.
    pub(super) fn named(
        &mut self,
        user: impl IntoIterator<Item = u32>,
        kernel: impl IntoIterator<Item = u32>,
    ) {
        self.window += 1;
        for id in user {
            self.user.insert(id, self.window);
        }
        for id in kernel {
            self.kernel.insert(id, self.window);
        }
    }

    /// Of the stacks kept (`user`, `kernel`): those to let go of in the kernel now (idle for
    /// `IDLE_WINDOWS`), and those to drop here now (let go of in the kernel a window ago and
    /// not named since).
    pub(super) fn retire(
        &mut self,
        user: impl IntoIterator<Item = u32>,
        kernel: impl IntoIterator<Item = u32>,
    ) -> (Retired, Retired) {
        let now = self.window;
        let previous = std::mem::take(&mut self.retiring);
        let not_named = |ages: &HashMap<u32, u32>, ids: Vec<u32>| -> Vec<u32> {
            ids.into_iter()
                .filter(|id| ages.get(id) != Some(&now))
                .collect()
        };
        let dropped = Retired {
            user: not_named(&self.user, previous.user),
            kernel: not_named(&self.kernel, previous.kernel),
        };
        self.retiring = Retired {
            user: idle(&mut self.user, user, &dropped.user, now),
            kernel: idle(&mut self.kernel, kernel, &dropped.kernel, now),
        };
        (self.retiring.clone(), dropped)
    }
}

/// Of the stacks kept but those dropped now, the ones idle for `IDLE_WINDOWS`, in order; the
/// ages of the others kept (a stack stored since the last window starts its age now).
fn idle(
    ages: &mut HashMap<u32, u32>,
    kept: impl IntoIterator<Item = u32>,
    dropped: &[u32],
    now: u32,
) -> Vec<u32> {
    let dropped: HashSet<u32> = dropped.iter().copied().collect();
    let kept: HashSet<u32> = kept
        .into_iter()
        .filter(|id| !dropped.contains(id))
        .collect();
    ages.retain(|id, _| kept.contains(id));
    let mut idle: Vec<u32> = kept
        .into_iter()
        .filter(|&id| now.saturating_sub(*ages.entry(id).or_insert(now)) >= IDLE_WINDOWS)
        .collect();
    idle.sort_unstable();
    idle
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_stack_goes_from_the_kernel_then_from_here_unless_named_again() {
        let mut ages = StackAges::default();
        ages.named([1, 2], [7]);
        let (retiring, dropped) = ages.retire([1, 2, 3], [7]);
        assert_eq!(
            (retiring, dropped),
            (Retired::default(), Retired::default())
        );
        // Stack 1 named every window; 2 and 7 never again; 3 stored but never named.
        for _ in 0..3 {
            ages.named([1], []);
            assert_eq!(ages.retire([1, 2, 3], [7]).0, Retired::default());
        }
        ages.named([1], []);
        let (retiring, dropped) = ages.retire([1, 2, 3], [7]);
        assert_eq!(retiring.user, [2, 3]);
        assert_eq!(retiring.kernel, [7]);
        assert_eq!(dropped, Retired::default());
        // Stack 2 stored again by a sample that came meanwhile, and named: it stays.
        ages.named([1, 2], []);
        let (retiring, dropped) = ages.retire([1, 2, 3, 4], [7]);
        assert_eq!(dropped.user, [3]);
        assert_eq!(dropped.kernel, [7]);
        assert_eq!(retiring, Retired::default());
        assert_eq!(ages.user.len(), 3, "no age kept of a stack dropped");
        assert!(ages.kernel.is_empty());
    }
}
