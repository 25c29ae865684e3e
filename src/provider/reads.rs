//! The autoscaler's reads: node groups with the sizes in force, instances, which group a node
//! belongs to, templates and options. Map lookups under a short lock; never an API call.

use super::*;

impl Provider {
    /// The node groups with the sizes in force now (schedules and hibernation applied).
    pub fn node_groups(&self) -> Vec<GroupInfo> {
        // One look at the manual controls for all groups; groups without windows or controls
        // answer their configured sizes without evaluating anything.
        let manual: std::collections::BTreeMap<String, Manual> = {
            let st = self.lock();
            st.hibernations()
                .map(|(k, v)| (k.clone(), v.manual.clone()))
                .collect()
        };
        let now = self.inner.options.clock.now();
        self.config()
            .node_groups
            .iter()
            .map(|g| self.info_at(g, manual.get(&g.name), now))
            .collect()
    }

    /// The group's sizes at `now`; configured ones unless windows or manual controls exist.
    pub(super) fn info_at(
        &self,
        g: &NodeGroupConfig,
        manual: Option<&Manual>,
        now: jiff::Timestamp,
    ) -> GroupInfo {
        let (min_size, max_size) =
            if g.schedules.is_empty() && g.hibernate.is_empty() && manual.is_none() {
                (g.min_size, g.max_size)
            } else {
                let f = in_force::in_force(
                    g,
                    &self.config().timezone,
                    now,
                    manual.unwrap_or(&Manual::default()),
                );
                (f.min_size, f.max_size)
            };
        GroupInfo {
            id: g.name.clone(),
            min_size,
            max_size,
        }
    }

    /// What the group's schedule and hibernation say now.
    pub fn in_force(&self, group: &str) -> Result<InForce> {
        let g = self.group(group)?;
        Ok(self.in_force_for(&g))
    }

    pub(super) fn in_force_for(&self, g: &NodeGroupConfig) -> InForce {
        self.in_force_for_locked(&self.lock(), g)
    }

    pub(super) fn group_info(&self, g: &NodeGroupConfig) -> GroupInfo {
        let manual = self.lock().hibernation(&g.name).map(|h| h.manual.clone());
        self.info_at(g, manual.as_ref(), self.inner.options.clock.now())
    }

    pub(super) fn has_hibernation(&self, group: &str) -> bool {
        self.lock().hibernation(group).is_some()
    }

    /// The group of a node, or `None` when it is not one of ours (the autoscaler then leaves it
    /// alone). Matches by providerID, then by node name. (A node without a providerID gets one
    /// from the node controller, with the template's labels.)
    pub fn node_group_for_node(&self, node: &NodeRef) -> Option<GroupInfo> {
        let group = {
            let st = self.lock();
            let inst = self.find_instance(&st, node)?;
            if inst.phase() == Phase::Deleting && inst.terminated() {
                return None;
            }
            self.group(&inst.group).ok()
        };
        group.map(|g| self.group_info(&g))
    }

    /// The autoscaler's instance a node names (the standby pool's servers are no node of any
    /// group: the autoscaler can neither see nor delete them).
    pub(super) fn find_instance<'s>(&self, st: &'s State, node: &NodeRef) -> Option<&'s Instance> {
        let ours = |i: &&Instance| !i.standby;
        let by_id = (!node.provider_id.is_empty())
            .then(|| {
                st.instance(self.server_name(&node.provider_id))
                    .filter(ours)
            })
            .flatten();
        // A node whose providerID uses another scheme (or none yet) is matched by its name, which
        // equals the server name.
        by_id.or_else(|| {
            (!node.name.is_empty())
                .then(|| st.instance(&node.name).filter(ours))
                .flatten()
        })
    }

    pub fn target_size(&self, group: &str) -> Result<u32> {
        self.group(group)?;
        Ok(u32::try_from(self.lock().target_size(group)).unwrap_or(u32::MAX))
    }

    pub fn nodes(&self, group: &str) -> Result<Vec<InstanceView>> {
        // One config for the whole answer (read once, not per instance under the state lock).
        let g = self.group(group)?;
        let prefix = &g.config.provider_id_prefix;
        let st = self.lock();
        Ok(st
            .group_instances(group)
            .map(|i| InstanceView {
                id: format!("{prefix}{}", i.name),
                phase: i.phase(),
                error: i.error.clone(),
            })
            .collect())
    }

    pub fn template_node(&self, group: &str) -> Result<TemplateNode> {
        let g = self.group(group)?;
        Ok(template::build(&g, self.inner.options.kube.is_some()))
    }

    /// The group's options in force now (a schedule window may override some).
    pub fn options(&self, group: &str) -> Result<OptionOverrides> {
        let g = self.group(group)?;
        if g.schedules.is_empty() {
            return Ok(g.options);
        }
        Ok(self.in_force_for(&g).options)
    }

    pub(super) fn in_force_for_locked(&self, st: &State, g: &NodeGroupConfig) -> InForce {
        let manual = st
            .hibernation(&g.name)
            .map(|h| h.manual.clone())
            .unwrap_or_default();
        in_force::in_force(
            g,
            &self.config().timezone,
            self.inner.options.clock.now(),
            &manual,
        )
    }

    pub fn gpu_label(&self) -> String {
        self.config().gpu_label.clone()
    }
}
