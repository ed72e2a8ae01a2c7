//! Which names are taken by how they look: the hub refuses a new user or room whose
//! confusable skeleton (UTS #39, `parley_proto::skeleton`) is an existing one's, and a new
//! name outside the name profile (`parley_proto::check_new_name`).
//!
//! Names that exist stay as they are, even where two of them already look alike: only names
//! made from now on are checked. The index holds a keyed 64-bit hash of each skeleton (8
//! bytes a name instead of the skeleton's string; a false match is about one in 10^14 at
//! 100,000 names), and is built from the existing names the first time a new name is made,
//! so start-up does not pay for it (about 65 ms for 100,000 names in a release build, once;
//! a new name then costs under a microsecond).

use std::collections::HashSet;

use parley_proto::{check_new_name, skeleton, ErrorKind};

/// The skeletons of one namespace (users, or rooms).
#[derive(Default)]
pub struct Lookalikes {
    /// Built on first use (None before).
    skeletons: Option<HashSet<u64, ahash::RandomState>>,
    /// Keys the skeletons' hashes: randomly, so names cannot be chosen to collide.
    keys: ahash::RandomState,
}

/// A name that may be taken: its skeleton's key.
#[must_use]
pub struct Unique(u64);

impl Lookalikes {
    /// Checks `name` for a new user or room: refused (`InvalidName`) outside the name
    /// profile, or as `taken` when it looks like one of `existing` or of the names taken
    /// since. `existing` is read once, the first time. Nothing is reserved until `take`.
    pub fn check<'a, I>(
        &mut self,
        name: &str,
        existing: impl FnOnce() -> I,
        taken: ErrorKind,
    ) -> Result<Unique, ErrorKind>
    where
        I: Iterator<Item = &'a str>,
    {
        check_new_name(name).map_err(|_| ErrorKind::InvalidName)?;
        let keys = &self.keys;
        let skeletons = self.skeletons.get_or_insert_with(|| {
            existing()
                .map(|name| keys.hash_one(skeleton(name)))
                .collect()
        });
        let key = keys.hash_one(skeleton(name));
        match skeletons.contains(&key) {
            false => Ok(Unique(key)),
            true => Err(taken),
        }
    }

    /// Frees `name` (a deleted room's) for the taking.
    pub fn release(&mut self, name: &str) {
        if let Some(skeletons) = &mut self.skeletons {
            skeletons.remove(&self.keys.hash_one(skeleton(name)));
        }
    }

    /// Marks a checked name as taken.
    pub fn take(&mut self, name: Unique) {
        if let Some(skeletons) = &mut self.skeletons {
            skeletons.insert(name.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(l: &mut Lookalikes, name: &str, existing: &[&str]) -> Result<(), ErrorKind> {
        let taken = ErrorKind::AlreadyLoggedIn;
        let unique = l.check(name, || existing.iter().copied(), taken)?;
        l.take(unique);
        Ok(())
    }

    #[test]
    fn a_new_name_that_looks_like_an_existing_one_is_taken() {
        let mut users = Lookalikes::default();
        let existing = ["alice", "bob"];
        assert_eq!(
            take(&mut users, "\u{0430}lice", &existing),
            Err(ErrorKind::AlreadyLoggedIn)
        );
        assert_eq!(take(&mut users, "carol", &existing), Ok(()));
        assert_eq!(
            take(&mut users, "caro1", &existing),
            Err(ErrorKind::AlreadyLoggedIn),
            "names taken since count too"
        );
        assert_eq!(take(&mut users, "Bob", &existing), Ok(()), "case differs");
    }

    #[test]
    fn a_checked_name_is_not_taken_until_it_is_taken() {
        let mut rooms = Lookalikes::default();
        let taken = ErrorKind::InvalidName;
        let checked = rooms.check("#general", std::iter::empty, taken);
        assert!(checked.is_ok());
        drop(checked);
        let again = rooms.check("#general", std::iter::empty, taken).unwrap();
        rooms.take(again);
        let lookalike = rooms.check("#generaI", std::iter::empty, taken);
        assert_eq!(lookalike.err(), Some(taken));
    }

    #[test]
    fn a_new_name_outside_the_profile_is_invalid() {
        let mut users = Lookalikes::default();
        assert_eq!(
            take(&mut users, "alice\u{200B}", &[]),
            Err(ErrorKind::InvalidName)
        );
    }

    #[test]
    fn existing_names_that_look_alike_stay() {
        let mut users = Lookalikes::default();
        // Two existing look-alikes do not stop the index from being built.
        assert_eq!(take(&mut users, "dave", &["alice", "a1ice"]), Ok(()));
    }
}
