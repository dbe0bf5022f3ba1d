//! JSON as docker prints its objects: keys in the order of docker's Go structs (serde_json's
//! maps are sorted), `inspect`'s four-space indentation. An object is recognised by its keys:
//! when every key is a field of one of docker's structs below, they come in that struct's
//! order; any other object (labels, env maps, kiln's own documents) keeps sorted keys. Keys
//! docker's struct lacks (kiln's additions) follow its fields, sorted.

use std::fmt::Write as _;

use serde_json::Value;

/// Which of docker's two renderings: `docker inspect`'s document (the daemon's JSON: an
/// image's `Config` with sorted keys), or a template's `{{json .X}}` (the CLI's typed structs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Inspect,
    Template,
}

/// `docker image inspect`'s fields (Docker 28.5, API 1.51).
const IMAGE: &[&str] = &[
    "Id",
    "RepoTags",
    "RepoDigests",
    "Parent",
    "Comment",
    "Created",
    "DockerVersion",
    "Author",
    "Architecture",
    "Variant",
    "Os",
    "OsVersion",
    "Size",
    "GraphDriver",
    "RootFS",
    "Metadata",
    "Config",
    // kiln's own, after docker's.
    "ManifestDigest",
    "Manifest",
    "ImageConfig",
    "IndexDigest",
    "Index",
    "Platforms",
];

/// An image's `Config` as the CLI's `DockerOCIImageConfig` orders it (templates only: the
/// daemon's inspect document sorts it).
const IMAGE_CONFIG: &[&str] = &[
    "User",
    "ExposedPorts",
    "Env",
    "Entrypoint",
    "Cmd",
    "Volumes",
    "WorkingDir",
    "Labels",
    "StopSignal",
    "ArgsEscaped",
    "Healthcheck",
    "OnBuild",
    "Shell",
];

/// `docker container inspect`'s fields.
const CONTAINER: &[&str] = &[
    "Id",
    "Created",
    "Path",
    "Args",
    "State",
    "Image",
    "ResolvConfPath",
    "HostnamePath",
    "HostsPath",
    "LogPath",
    "Name",
    "RestartCount",
    "Driver",
    "Platform",
    "MountLabel",
    "ProcessLabel",
    "AppArmorProfile",
    "ExecIDs",
    "HostConfig",
    "GraphDriver",
    "Mounts",
    "Config",
    "NetworkSettings",
];

const CONTAINER_STATE: &[&str] = &[
    "Status",
    "Running",
    "Paused",
    "Restarting",
    "OOMKilled",
    "Dead",
    "Pid",
    "ExitCode",
    "Error",
    "StartedAt",
    "FinishedAt",
    "Health",
    // kiln's own.
    "OwnerPid",
];

/// A container's `Config` (docker's `container.Config`).
const CONTAINER_CONFIG: &[&str] = &[
    "Hostname",
    "Domainname",
    "User",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "ExposedPorts",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Cmd",
    "Healthcheck",
    "ArgsEscaped",
    "Image",
    "Volumes",
    "WorkingDir",
    "Entrypoint",
    "NetworkDisabled",
    "MacAddress",
    "OnBuild",
    "Labels",
    "StopSignal",
    "StopTimeout",
    "Shell",
];

const HOST_CONFIG: &[&str] = &[
    "Binds",
    "ContainerIDFile",
    "LogConfig",
    "NetworkMode",
    "PortBindings",
    "RestartPolicy",
    "AutoRemove",
    "VolumeDriver",
    "VolumesFrom",
    "ConsoleSize",
    "CapAdd",
    "CapDrop",
    "CgroupnsMode",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "GroupAdd",
    "IpcMode",
    "Cgroup",
    "Links",
    "OomScoreAdj",
    "PidMode",
    "Privileged",
    "PublishAllPorts",
    "ReadonlyRootfs",
    "SecurityOpt",
    "UTSMode",
    "UsernsMode",
    "ShmSize",
    "Runtime",
    "Isolation",
    "CpuShares",
    "Memory",
    "NanoCpus",
    "CgroupParent",
    "BlkioWeight",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "CpuPeriod",
    "CpuQuota",
    "CpuRealtimePeriod",
    "CpuRealtimeRuntime",
    "CpusetCpus",
    "CpusetMems",
    "Devices",
    "DeviceCgroupRules",
    "DeviceRequests",
    "MemoryReservation",
    "MemorySwap",
    "MemorySwappiness",
    "OomKillDisable",
    "PidsLimit",
    "Ulimits",
    "CpuCount",
    "CpuPercent",
    "IOMaximumIOps",
    "IOMaximumBandwidth",
    "MaskedPaths",
    "ReadonlyPaths",
    // kiln's own.
    "Init",
];

/// A mount of a container's `Mounts`.
const MOUNT_POINT: &[&str] = &[
    "Type",
    "Name",
    "Source",
    "Destination",
    "Driver",
    "Mode",
    "RW",
    "Propagation",
];

const NETWORK_SETTINGS: &[&str] = &[
    "Bridge",
    "SandboxID",
    "SandboxKey",
    "Ports",
    "HairpinMode",
    "LinkLocalIPv6Address",
    "LinkLocalIPv6PrefixLen",
    "SecondaryIPAddresses",
    "SecondaryIPv6Addresses",
    "EndpointID",
    "Gateway",
    "GlobalIPv6Address",
    "GlobalIPv6PrefixLen",
    "IPAddress",
    "IPPrefixLen",
    "IPv6Gateway",
    "MacAddress",
    "Networks",
];

const ROOTFS: &[&str] = &["Type", "Layers"];
const PORT_BINDING: &[&str] = &["HostIp", "HostPort"];

/// The key order for an object with these keys, if it is one of docker's.
fn order_for(
    map: &serde_json::Map<String, Value>,
    style: Style,
) -> Option<&'static [&'static str]> {
    let mut lists: Vec<&'static [&'static str]> = Vec::new();
    // The distinguishing field first: a document is an image's or a container's by its keys.
    if map.contains_key("RepoTags") || map.contains_key("RootFS") {
        lists.push(IMAGE);
    }
    if map.contains_key("State") || map.contains_key("HostConfig") {
        lists.push(CONTAINER);
    }
    if map.contains_key("Running") || map.contains_key("OOMKilled") {
        lists.push(CONTAINER_STATE);
    }
    if map.contains_key("Hostname") || map.contains_key("Tty") || map.contains_key("Image") {
        lists.push(CONTAINER_CONFIG);
    }
    if map.contains_key("NetworkMode") || map.contains_key("AutoRemove") {
        lists.push(HOST_CONFIG);
    }
    if map.contains_key("Destination") {
        lists.push(MOUNT_POINT);
    }
    if map.contains_key("SandboxKey") || map.contains_key("Ports") && map.len() <= 18 {
        lists.push(NETWORK_SETTINGS);
    }
    if map.contains_key("Layers") && map.contains_key("Type") {
        lists.push(ROOTFS);
    }
    if map.contains_key("HostPort") {
        lists.push(PORT_BINDING);
    }
    if style == Style::Template {
        lists.push(IMAGE_CONFIG);
    }
    // The first list that names most of the keys (kiln's extra keys may follow).
    lists
        .into_iter()
        .find(|list| map.keys().filter(|k| list.contains(&k.as_str())).count() * 2 > map.len())
}

fn ordered_keys(map: &serde_json::Map<String, Value>, style: Style) -> Vec<&String> {
    let mut keys: Vec<&String> = map.keys().collect();
    if let Some(order) = order_for(map, style) {
        keys.sort_by_key(|k| {
            (
                order.iter().position(|o| o == k).unwrap_or(order.len()),
                k.as_str(),
            )
        });
    }
    keys
}

/// Compact JSON (a template's `{{json .Config}}`).
pub fn to_string(v: &Value, style: Style) -> String {
    let mut out = String::new();
    write(&mut out, v, style, None, 0);
    out
}

/// `docker inspect`'s indented JSON (four spaces).
pub fn to_string_pretty(v: &Value, style: Style) -> String {
    let mut out = String::new();
    write(&mut out, v, style, Some("    "), 0);
    out
}

fn newline(out: &mut String, indent: Option<&str>, depth: usize) {
    if let Some(unit) = indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(unit);
        }
    }
}

fn write(out: &mut String, v: &Value, style: Style, indent: Option<&str>, depth: usize) {
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent, depth + 1);
                write(out, item, style, indent, depth + 1);
            }
            newline(out, indent, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, k) in ordered_keys(map, style).into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                newline(out, indent, depth + 1);
                let _ = write!(out, "{}", Value::String(k.clone()));
                out.push(':');
                if indent.is_some() {
                    out.push(' ');
                }
                write(out, &map[k], style, indent, depth + 1);
            }
            newline(out, indent, depth);
            out.push('}');
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn templates_print_an_image_config_in_dockers_field_order() {
        let config = json!({"ArgsEscaped": true, "Cmd": ["sh"], "Env": ["A=1"], "Labels": {"b": "1", "a": "2"}});
        // Docker 28.5: `{{json .Config}}` of the same image.
        assert_eq!(
            to_string(&config, Style::Template),
            r#"{"Env":["A=1"],"Cmd":["sh"],"Labels":{"a":"2","b":"1"},"ArgsEscaped":true}"#
        );
        // The inspect document keeps an image's Config sorted, as the daemon sends it.
        assert_eq!(
            to_string(&config, Style::Inspect),
            r#"{"ArgsEscaped":true,"Cmd":["sh"],"Env":["A=1"],"Labels":{"a":"2","b":"1"}}"#
        );
    }

    #[test]
    fn documents_in_dockers_order_with_four_spaces() {
        let doc = json!([{"Size": 1, "Id": "sha256:x", "RepoTags": [], "Config": {}, "Os": "linux", "Manifest": {"b": 1, "a": 2}}]);
        assert_eq!(
            to_string_pretty(&doc, Style::Inspect),
            "[\n    {\n        \"Id\": \"sha256:x\",\n        \"RepoTags\": [],\n        \"Os\": \"linux\",\n        \"Size\": 1,\n        \"Config\": {},\n        \"Manifest\": {\n            \"a\": 2,\n            \"b\": 1\n        }\n    }\n]"
        );
        let state = json!({"Pid": 0, "Status": "exited", "Running": false, "OwnerPid": 0});
        assert_eq!(
            to_string(&state, Style::Template),
            r#"{"Status":"exited","Running":false,"Pid":0,"OwnerPid":0}"#
        );
    }
}
