//! Plain LRU, the yardstick the eviction policy is measured against. Same entries,
//! index and lists as [`super::Evictor`], so the comparison is of policies, not of
//! implementations: a hit moves the line to the head, a miss evicts the tail.

use super::{List, Policy, Queue, Slab};

pub struct Lru {
    slab: Slab,
    list: List,
}

impl Lru {
    pub fn new(capacity: u64) -> Self {
        Lru {
            slab: Slab::new(capacity),
            list: List::EMPTY,
        }
    }

    pub fn len(&self) -> u64 {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn heap_bytes(&self) -> usize {
        self.slab.heap_bytes()
    }
}

impl Policy for Lru {
    fn access(&mut self, line: u64) -> bool {
        if let Some(i) = self.slab.find(line) {
            self.slab.move_to_head(&mut self.list, i);
            return true;
        }
        if self.slab.len() == self.slab.capacity() {
            let tail = self.list.tail;
            self.slab.unlink(&mut self.list, tail);
            self.slab.release(tail);
        }
        let i = self.slab.alloc(line, Queue::Main);
        self.slab.push_head(&mut self.list, i);
        false
    }

    fn name(&self) -> &'static str {
        "LRU"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut lru = Lru::new(3);
        for line in [1, 2, 3] {
            assert!(!lru.access(line));
        }
        assert!(lru.access(1)); // order, newest first: 1 3 2
        assert!(!lru.access(4)); // evicts 2
        assert!(!lru.access(2)); // evicts 3
        assert!(lru.access(1));
        assert!(lru.access(4));
        assert!(!lru.access(3));
        assert_eq!(lru.len(), 3);
        lru.slab.check_list(&lru.list, Queue::Main);
        lru.slab.check_free();
    }
}
