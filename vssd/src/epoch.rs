//! The membership epoch of the vSSD's cache device (DESIGN.md, "epoch"): the number
//! of its replica membership and the members, as the DTM sets them
//! ([`crate::Vssd::set_epoch`]). Kept by EPOCH records in the log and by every
//! checkpoint (the log before a checkpoint is reused), restored by recovery. An
//! epoch never goes back: the DTM refuses requests of an older epoch by it, which
//! fences a cut-off primary.

use crate::record::EPOCH_MEMBERS_MAX;

/// An epoch and its members (member ids in the DTM's order). A vSSD never given one
/// is at epoch 0 with no members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub epoch: u64,
    pub members: Vec<u64>,
}

impl Membership {
    /// Moves to `epoch` with `members`: a later epoch, or the same one with the same
    /// members (nothing changes). Otherwise why not.
    pub(crate) fn advance(&mut self, epoch: u64, members: &[u64]) -> Result<(), String> {
        if members.len() > EPOCH_MEMBERS_MAX {
            return Err(format!(
                "{} members, an epoch has at most {EPOCH_MEMBERS_MAX}",
                members.len()
            ));
        }
        if epoch < self.epoch {
            return Err(format!(
                "the vSSD is at epoch {}: an epoch never goes back",
                self.epoch
            ));
        }
        if epoch == self.epoch && members != self.members {
            return Err(format!(
                "epoch {epoch} has members {:?} already, not {members:?}",
                self.members
            ));
        }
        self.epoch = epoch;
        self.members = members.to_vec();
        Ok(())
    }
}
