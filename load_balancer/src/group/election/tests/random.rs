//! Seeded random fault schedules with two coordinators.

use super::*;

/// A small deterministic generator (xorshift64*), so a failing schedule
/// replays from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        usize::try_from(x % u64::try_from(n).unwrap()).unwrap()
    }
}

#[test]
fn two_coordinators_under_random_faults_promote_once_per_epoch_and_recover() {
    const LINKS: [Link; 5] = [
        Link::Up,
        Link::Refused,
        Link::Silent,
        Link::LosesAnswers,
        Link::MutesFences,
    ];
    for seed in 1..=200u64 {
        let idle = |term, index| Model::new(0, NodeRole::Idle, term, index);
        let mut sim = Sim::new(cluster(vec![idle(1, 4), idle(1, 6), idle(1, 5)]), 2);
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        for _ in 0..300 {
            if rng.below(4) == 0 {
                let slot = rng.below(3);
                sim.links[slot] = LINKS[rng.below(LINKS.len())];
            }
            let b = rng.below(2);
            sim.tick_one(b);
        }
        // Each engine promotes at most once per epoch, and epochs minted by
        // different engines differ: so at most one promote per epoch.
        let mut by_epoch: BTreeMap<Epoch, usize> = BTreeMap::new();
        for (_, epoch) in sim.promotes_sent() {
            *by_epoch.entry(epoch).or_default() += 1;
        }
        assert!(
            by_epoch.values().all(|&n| n == 1),
            "seed {seed}: promoted twice at one epoch: {by_epoch:?}"
        );
        // Once the network heals, both balancers agree on one leader.
        sim.links = vec![Link::Up; 3];
        for _ in 0..400 {
            let b = rng.below(2);
            sim.tick_one(b);
            let leaders: Vec<_> = sim.tables.iter().map(|t| t.leader()).collect();
            if leaders[0].is_some() && leaders[0] == leaders[1] {
                break;
            }
        }
        let leaders: Vec<_> = sim.tables.iter().map(|t| t.leader()).collect();
        assert!(
            leaders[0].is_some() && leaders[0] == leaders[1],
            "seed {seed}: no common leader after healing: {leaders:?}"
        );
        let leading: Vec<&Model> = sim
            .models
            .iter()
            .filter(|m| m.role == NodeRole::Leader && Some(m.epoch) == leaders[0].map(|l| l.epoch))
            .collect();
        assert_eq!(leading.len(), 1, "seed {seed}: {:?}", sim.models);
    }
}
