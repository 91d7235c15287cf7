//! Helpers shared by the Redis test files.
#![allow(dead_code)]

use finsight_testkit::{redis_url, unique};

/// A Redis ACL user made for one test, deleted (with its connections) on drop.
pub struct AclUser {
    pub name: String,
    password: String,
}

impl AclUser {
    /// `ACL SETUSER <unique> on ><password> ~* &* +@all <extra rules>`.
    pub fn create(label: &str, extra_rules: &[&str]) -> Self {
        let name = unique(label);
        let password = unique("pw");
        let mut conn = admin();
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(&name)
            .arg("on")
            .arg(format!(">{password}"))
            .arg("~*")
            .arg("&*")
            .arg("+@all");
        for rule in extra_rules {
            cmd.arg(*rule);
        }
        let () = cmd.query(&mut conn).expect("ACL SETUSER");
        Self { name, password }
    }

    /// [`redis_url`] with this user's credentials.
    pub fn url(&self) -> String {
        let base = redis_url();
        let (scheme, rest) = base.split_once("://").unwrap_or(("redis", &base));
        let rest = rest.rsplit_once('@').map_or(rest, |(_, hostpart)| hostpart);
        format!("{scheme}://{}:{}@{rest}", self.name, self.password)
    }

    /// `CLIENT LIST` lines of this user's connections.
    pub fn connections(&self) -> Vec<String> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query(&mut admin())
            .expect("CLIENT LIST");
        let tag = format!(" user={} ", self.name);
        list.lines()
            .filter(|l| l.contains(&tag))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        // Also disconnects the user's clients.
        let r: redis::RedisResult<i64> = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&self.name)
            .query(&mut admin());
        if let Err(e) = r {
            eprintln!("ACL DELUSER {} failed: {e}", self.name);
        }
    }
}

/// A blocking connection as the URL's (default) user.
pub fn admin() -> redis::Connection {
    redis::Client::open(redis_url())
        .expect("Redis URL")
        .get_connection()
        .expect("connect to Redis")
}
