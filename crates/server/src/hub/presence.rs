//! Live presence in the hub: sessions watch the users they show, and are told when each
//! comes online (their first session) and goes offline (their last).
//!
//! Who hears of a login is who asked: a session's watch list (`WATCH`, bounded by
//! `max_watched_users`), not everyone online and not every co-member of a room. So a login
//! costs as many notices as it has watchers, and a storm of n logins costs at most n times
//! the longest list, where a notice to every session would cost n² (10,000 logins: 10⁸
//! lines). Sessions that never watch keep the old behaviour: JSON's `disconnected` for
//! every user, seed 002's `INFO <name> disconnected`; one that watches leaves that list
//! (`Online::listens`).

use std::sync::Arc;

use super::core::{Audience, Core, Effect};
use super::Map;
use crate::outbound::{Item, Link, Notice, SharedNotice};
use crate::store::UserId;

/// One watched user as a watch's answer shows them.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: Arc<str>,
    pub online: bool,
}

/// Who watches whom: per watched user, the sessions watching (with the user each session
/// is); per session, its list.
#[derive(Default)]
pub(super) struct Watches {
    pub watchers: Map<UserId, Vec<(UserId, Arc<Link>)>>,
    pub lists: Map<u64, Vec<UserId>>,
}

impl Core {
    /// Replaces the watch list of `link` (a session of `user`) with the users of `names`
    /// that exist; returns them with their presence now.
    pub(super) fn watch(
        &mut self,
        link: &Arc<Link>,
        user: UserId,
        names: &[String],
    ) -> Vec<Watched> {
        self.unwatch(link.id);
        let mut found: Vec<(UserId, Arc<str>)> = names
            .iter()
            .filter_map(|n| self.names.get_key_value(n.as_bytes()))
            .map(|(key, &id)| (id, key.0.clone()))
            .filter(|(id, _)| *id != self.anonymous)
            .collect();
        found.sort_by_key(|(id, _)| *id);
        found.dedup_by_key(|(id, _)| *id);
        for (watched, _) in &found {
            let list = self.watches.watchers.entry(*watched).or_default();
            list.push((user, link.clone()));
        }
        if !found.is_empty() {
            let ids = found.iter().map(|(id, _)| *id).collect();
            self.watches.lists.insert(link.id, ids);
        }
        // A session that watches is told of its users' comings and goings, not everyone's.
        self.stop_listening(user, link.id);
        // Answered by name, as every listing is.
        found.sort_by(|a, b| a.1.cmp(&b.1));
        found
            .into_iter()
            .map(|(id, name)| Watched {
                online: self.online.contains_key(&id),
                name,
            })
            .collect()
    }

    /// Forgets the watch list of session `link_id`.
    pub(super) fn unwatch(&mut self, link_id: u64) {
        let Some(list) = self.watches.lists.remove(&link_id) else {
            return;
        };
        for watched in list {
            if let Some(watchers) = self.watches.watchers.get_mut(&watched) {
                watchers.retain(|(_, l)| l.id != link_id);
                if watchers.is_empty() {
                    self.watches.watchers.remove(&watched);
                }
            }
        }
    }

    /// Tells the watchers of `user` that they came online (`last_seen` None) or went
    /// offline.
    pub(super) fn announce(
        &self,
        user: UserId,
        last_seen: Option<i64>,
        except: u64,
        effects: &mut Vec<Effect>,
    ) {
        if !self.watches.watchers.contains_key(&user) {
            return;
        }
        let name = self.users[&user].clone();
        let notice = match last_seen {
            None => Notice::Online { name },
            Some(at) => Notice::Offline {
                name,
                last_seen: at,
            },
        };
        effects.push(Effect::Notify {
            notice: Arc::new(SharedNotice::new(notice)),
            audience: Audience::Watchers(user),
            except,
        });
    }

    /// The sessions watching `user` that take pushes now.
    pub(super) fn watchers_of(&self, user: UserId) -> impl Iterator<Item = &Arc<Link>> {
        let list = self.watches.watchers.get(&user).into_iter().flatten();
        list.filter(|(watcher, link)| {
            let devices = self.online.get(watcher).into_iter().flatten();
            devices
                .filter(|o| o.link.id == link.id)
                .any(|o| o.push && o.welcomed)
        })
        .map(|(_, link)| link)
    }
}

/// The answer to a watch, rendered by the session for its protocol and queued by the hub
/// in order with the pushes that follow it.
pub type RenderWatch = Box<dyn FnOnce(&[Watched]) -> Item + Send>;
