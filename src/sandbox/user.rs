//! Resolving `USER` (`name`, `uid`, `uid:gid`, `name:group`) against the image's /etc/passwd and
//! /etc/group, the way docker and runc do: a numeric uid missing from passwd is allowed (gid 0),
//! a name that is missing is an error, supplementary groups come from /etc/group membership.

/// The identity the process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The home directory from passwd (for `HOME` when the environment has none).
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 6 || line.starts_with('#') {
            return None;
        }
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

fn group_entries(group: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    group.lines().filter_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 3 || line.starts_with('#') {
            return None;
        }
        Some(GroupEntry {
            name: f[0],
            gid: f[2].parse().ok()?,
            members: f
                .get(3)
                .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
                .unwrap_or_default(),
        })
    })
}

/// Resolves `spec` (empty = root) with the contents of the image's /etc/passwd and /etc/group
/// (empty strings when the files are missing).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<User, String> {
    let spec = spec.trim();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };

    let by_name = passwd_entries(passwd).find(|e| e.name == user_part);
    let (uid, mut gid, name, home) = match (by_name, user_part.parse::<u32>()) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.to_string()), e.home.to_string()),
        (None, Ok(uid)) => match passwd_entries(passwd).find(|e| e.uid == uid) {
            Some(e) => (uid, e.gid, Some(e.name.to_string()), e.home.to_string()),
            None => (uid, 0, None, "/".to_string()),
        },
        (None, Err(_)) => {
            return Err(format!(
                "unable to find user {user_part}: no matching entries in passwd file"
            ))
        }
    };

    if let Some(g) = group_part {
        if g.is_empty() {
            return Err(format!("invalid user {spec:?}: empty group after ':'"));
        }
        gid = match group_entries(group).find(|e| e.name == g) {
            Some(e) => e.gid,
            None => g.parse::<u32>().map_err(|_| {
                format!("unable to find group {g}: no matching entries in group file")
            })?,
        };
    }

    // Supplementary groups: the groups listing the user by name (docker also keeps the primary
    // group first). A uid without a passwd entry has none, and neither does a user given with
    // its group (`USER app:app`: BuildKit runs it with that group alone).
    let mut additional_gids = vec![gid];
    if let (Some(name), None) = (&name, group_part) {
        for e in group_entries(group) {
            if e.members.iter().any(|m| m == name) && !additional_gids.contains(&e.gid) {
                additional_gids.push(e.gid);
            }
        }
    }
    Ok(User {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// Adds `--group-add` groups (a name from the image's /etc/group, or a number) to the user's
/// supplementary groups, after its own, as docker does; a name the image lacks is an error.
pub fn add_groups(user: &mut User, extra: &[String], group: &str) -> Result<(), String> {
    for g in extra {
        let gid = match group_entries(group).find(|e| e.name == g.as_str()) {
            Some(e) => e.gid,
            None => g.parse::<u32>().map_err(|_| {
                format!("unable to find group {g}: no matching entries in group file")
            })?,
        };
        if !user.additional_gids.contains(&gid) {
            user.additional_gids.push(gid);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_add_by_name_or_number_after_the_users_own() {
        let mut u = resolve("app", PASSWD, GROUP).unwrap();
        add_groups(&mut u, &["audio".into(), "5".into(), "wheel".into()], GROUP).unwrap();
        assert_eq!(u.additional_gids, [1000, 10, 29, 5]);
        let err = add_groups(&mut u, &["staff".into()], GROUP).unwrap_err();
        assert_eq!(
            err,
            "unable to find group staff: no matching entries in group file"
        );
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          app:x:1000:1000:app:/home/app:/bin/sh\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nwheel:x:10:app,other\naudio:x:29:app\n\
                         nogroup:x:65534:\n";

    #[test]
    fn empty_is_root() {
        let u = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn name_with_supplementary_groups() {
        let u = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.additional_gids, vec![1000, 10, 29]);
        assert_eq!(u.home, "/home/app");
    }

    #[test]
    fn numeric_uid_known_and_unknown() {
        let u = resolve("1000", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        let u = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (4242, 0, vec![0])
        );
        assert_eq!(u.home, "/");
    }

    #[test]
    fn uid_gid_and_name_group() {
        let u = resolve("4242:77", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 77));
        let u = resolve("app:wheel", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        let u = resolve("nobody:nogroup", PASSWD, GROUP).unwrap();
        assert_eq!((u.uid, u.gid), (65534, 65534));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(resolve("ghost", PASSWD, GROUP)
            .unwrap_err()
            .contains("ghost"));
        assert!(resolve("app:ghosts", PASSWD, GROUP)
            .unwrap_err()
            .contains("ghosts"));
        assert!(resolve("app:", PASSWD, GROUP).is_err());
        // No passwd file at all: names fail, numbers work.
        assert!(resolve("app", "", "").is_err());
        assert_eq!(resolve("12:34", "", "").unwrap().gid, 34);
    }
}
