//! What a crash does to layer 1's world. A client's process: its connection resets, its
//! WAL keeps what the device made durable and a torn tail, and it comes back when its
//! supervisor says Spawn. The broker's (with the agent it runs in): every link resets, a
//! fresh broker starts with the durable subscriptions' definitions the agent wrote to disk,
//! and the agent's control client and registry start over.

use std::time::Duration;

use daemoneye_core::acl::Acl;
use daemoneye_core::broker::Broker;

use super::agent::AgentCtl;
use super::shadow::Shadow;
use super::{UID, World};

impl World {
    pub(crate) fn crash_client(&mut self, i: usize) {
        if self.clients[i].process_down {
            return;
        }
        self.reset(i, "client crash");
        self.crash_wal(i);
        let now = self.now;
        self.clients[i].process_down = true;
        // Whatever it held dies with it: the coordinator's deadline or the owner's exit
        // moves those tasks on.
        self.clients[i].held.clear();
        let name = format!("c{i}");
        self.fleet
            .handle_exited(now, &name, super::agent::pid_of(i), "crash");
        let state = self
            .fleet
            .supervisor(&name)
            .map(|s| s.state().to_string())
            .unwrap_or_default();
        self.log(format!("crash c{i}; supervisor {state}"));
    }

    pub(crate) fn crash_broker(&mut self) {
        for i in 0..self.clients.len() {
            if self.clients[i].conn.is_some() {
                let link = self.new_link();
                let c = &mut self.clients[i];
                c.conn = None;
                c.session.handle_disconnect(self.now, "broker crash");
                c.link = link;
                c.unacked.clear();
                c.down_until = self.now + Duration::from_millis(self.rng.below(2000));
            }
        }
        self.broker_epoch += 1;
        // The agent writes durable subscriptions' definitions to disk whenever they change
        // (before the SubAck leaves), so the restarted broker has every one of them back.
        let durables = self.broker.durable_definitions();
        let broker_seed = self.rng.next_u64();
        self.broker = Broker::new(
            self.broker_config.clone(),
            Acl::owner_only(UID),
            broker_seed,
        );
        let cut_seed = self.shadow.rng.next_u64();
        self.shadow = Shadow::new(self.broker_config.clone(), broker_seed, cut_seed);
        for def in durables {
            for broker in [&mut self.broker, &mut self.shadow.broker] {
                // The broker's own definitions always restore: a refusal is a broker bug.
                broker
                    .restore_durable(self.now, def.clone())
                    .expect("a durable definition the broker gave back restores");
            }
        }
        // The agent embeds the broker: its control client starts over. Its fleet (the process
        // manager's side) carries on; every collector registers anew in the new session.
        self.agent = AgentCtl::new(self.broker_epoch);
        self.log("crash broker".into());
        self.agent_connect();
    }
}
