package api

import (
	"net/http"

	"github.com/labstack/echo/v4"
)

// obj is a JSON object in the OpenAPI document.
type obj = map[string]any

func ref(name string) obj { return obj{"$ref": "#/components/schemas/" + name} }

func jsonBody(schema obj) obj {
	return obj{"required": true, "content": obj{"application/json": obj{"schema": schema}}}
}

func jsonResp(desc string, schema obj) obj {
	return obj{"description": desc, "content": obj{"application/json": obj{"schema": schema}}}
}

func errResp(desc string) obj { return jsonResp(desc, ref("Error")) }

func pathParam(name, desc string, schema obj) obj {
	return obj{"name": name, "in": "path", "required": true, "description": desc, "schema": schema}
}

func queryParam(name, desc string, schema obj) obj {
	return obj{"name": name, "in": "query", "required": false, "description": desc, "schema": schema}
}

var (
	str     = obj{"type": "string"}
	boolean = obj{"type": "boolean"}
	int64s  = obj{"type": "integer", "format": "int64"}

	volumeName = pathParam("name", "volume name", str)
	iqnParamD  = pathParam("iqn", "target IQN", str)
	nqnParamD  = pathParam("nqn", "subsystem NQN (case-sensitive; the colon may be sent as %3A)", str)

	common = obj{
		"400": errResp("invalid request; field names the offending field"),
		"401": errResp("missing or invalid bearer token"),
		"429": errResp("too many failed authentications from this client address; retry after Retry-After seconds"),
	}
)

func responses(rs obj) obj {
	out := obj{}
	for k, v := range common {
		out[k] = v
	}
	for k, v := range rs {
		out[k] = v
	}
	return out
}

// openAPIDoc is the OpenAPI 3 description of every route. A test checks it
// against the routes echo has registered, so the two cannot drift.
var openAPIDoc = obj{
	"openapi": "3.0.3",
	"info": obj{
		"title":       "Anvil API",
		"version":     "1",
		"description": "Manage Anvil volumes, iSCSI targets, LUN mappings, NVMe subsystems and namespaces, access rules, sessions and controllers. Every change is applied live and persisted.",
	},
	"security": []any{obj{"bearer": []any{}}},
	"paths": obj{
		"/api/v1/health": obj{
			"get": obj{"summary": "Liveness and a summary of the daemon's state (no token needed)", "security": []any{},
				"responses": obj{"200": jsonResp("healthy", ref("Health"))}},
		},
		"/api/v1/openapi.json": obj{
			"get": obj{"summary": "This document", "responses": responses(obj{"200": jsonResp("the OpenAPI document", obj{"type": "object"})})},
		},
		"/api/v1/volumes": obj{
			"get": obj{"summary": "List volumes with live statistics",
				"responses": responses(obj{"200": jsonResp("volumes sorted by name", obj{"type": "array", "items": ref("Volume")})})},
			"post": obj{"summary": "Create a thin volume", "requestBody": jsonBody(ref("CreateVolume")),
				"responses": responses(obj{"201": jsonResp("created", ref("Volume")), "403": errResp("device not in volume.block_devices"), "409": errResp("a volume with that name exists, or the device is mounted or in use")})},
		},
		"/api/v1/volumes/import": obj{
			"post": obj{"summary": "Create a volume from a raw image: the request body (application/octet-stream, parameters in the query) or a file on the daemon's machine (application/json)",
				"parameters": []any{
					queryParam("name", "volume name (octet-stream upload)", str),
					queryParam("block_size", "512 (default) or 4096", obj{"type": "integer"}),
					queryParam("write_cache", "volatile write cache (default true)", boolean),
					queryParam("read_only", "refuse writes", boolean),
				},
				"requestBody": obj{"required": true, "content": obj{
					"application/octet-stream": obj{"schema": obj{"type": "string", "format": "binary"}},
					"application/json":         obj{"schema": ref("ImportPath")},
				}},
				"responses": responses(obj{"201": jsonResp("imported", ref("Volume")), "403": errResp("path not in volume.import_dirs (files) or volume.block_devices (devices)"), "409": errResp("a volume with that name exists, or the device is mounted or in use"), "415": errResp("unsupported content type")})},
		},
		"/api/v1/volumes/{name}": obj{
			"parameters": []any{volumeName},
			"get": obj{"summary": "Get a volume with live statistics",
				"responses": responses(obj{"200": jsonResp("the volume", ref("Volume")), "404": errResp("no such volume")})},
			"patch": obj{"summary": "Resize online (initiators get CAPACITY DATA HAS CHANGED), set write cache or read-only", "requestBody": jsonBody(ref("PatchVolume")),
				"responses": responses(obj{"200": jsonResp("the changed volume", ref("Volume")), "404": errResp("no such volume"), "422": errResp("the backend cannot make this change")})},
			"delete": obj{"summary": "Delete a volume and its data", "parameters": []any{queryParam("force", "unmap it from every target first", boolean)},
				"responses": responses(obj{"204": obj{"description": "deleted"}, "404": errResp("no such volume"), "409": errResp("the volume is mapped (use force=true)")})},
		},
		"/api/v1/volumes/{name}/faults": obj{
			"parameters": []any{volumeName},
			"put": obj{"summary": "Fail rate of every 10,000 backing I/Os with EIO (seeded, repeatable); rate 0 turns it off", "requestBody": jsonBody(ref("Faults")),
				"responses": responses(obj{"200": jsonResp("the volume", ref("Volume")), "404": errResp("no such volume"), "422": errResp("the engine cannot inject faults")})},
		},
		"/api/v1/volumes/{name}/clear-error": obj{
			"parameters": []any{volumeName},
			"post": obj{"summary": "Roll back a failed commit and accept writes again on a volume the engine froze read-only",
				"responses": responses(obj{"200": jsonResp("the volume", ref("Volume")), "404": errResp("no such volume"), "409": errResp("the volume ran out of space and its file system is still full"), "503": errResp("the backing store still fails")})},
		},
		"/api/v1/volumes/{name}/recheck": obj{
			"parameters": []any{volumeName},
			"post": obj{"summary": "Check an offline volume's files again and serve it if they now match the catalog",
				"responses": responses(obj{"200": jsonResp("the volume", ref("Volume")), "404": errResp("no such volume"), "409": errResp("the volume is still offline; the error says why")})},
		},
		"/api/v1/targets": obj{
			"get": obj{"summary": "List targets",
				"responses": responses(obj{"200": jsonResp("targets sorted by IQN", obj{"type": "array", "items": ref("Target")})})},
			"post": obj{"summary": "Create an iSCSI target", "requestBody": jsonBody(ref("CreateTarget")),
				"responses": responses(obj{"201": jsonResp("created", ref("Target")), "409": errResp("the target exists")})},
		},
		"/api/v1/targets/{iqn}": obj{
			"parameters": []any{iqnParamD},
			"get": obj{"summary": "Get a target",
				"responses": responses(obj{"200": jsonResp("the target", ref("Target")), "404": errResp("no such target")})},
			"delete": obj{"summary": "Delete a target (its volumes are kept)",
				"responses": responses(obj{"204": obj{"description": "deleted"}, "404": errResp("no such target")})},
		},
		"/api/v1/targets/{iqn}/luns": obj{
			"parameters": []any{iqnParamD},
			"post": obj{"summary": "Map a volume as a LUN", "requestBody": jsonBody(ref("MapLUN")),
				"responses": responses(obj{"201": jsonResp("the target with the new LUN", ref("Target")), "404": errResp("no such target or volume"), "409": errResp("the LUN is taken")})},
		},
		"/api/v1/targets/{iqn}/luns/{lun}": obj{
			"parameters": []any{iqnParamD, pathParam("lun", "LUN number", obj{"type": "integer", "minimum": 0, "maximum": 16383})},
			"delete": obj{"summary": "Unmap a LUN",
				"responses": responses(obj{"204": obj{"description": "unmapped"}, "404": errResp("no such target or LUN")})},
		},
		"/api/v1/targets/{iqn}/acl": obj{
			"parameters": []any{iqnParamD},
			"put": obj{"summary": "Replace the access list: initiator names, or open to admit everyone", "requestBody": jsonBody(ref("ACL")),
				"responses": responses(obj{"200": jsonResp("the target", ref("Target")), "404": errResp("no such target")})},
		},
		"/api/v1/targets/{iqn}/chap": obj{
			"parameters": []any{iqnParamD},
			"put": obj{"summary": "Require CHAP (optionally mutual); secrets are write-only", "requestBody": jsonBody(ref("CHAPRequest")),
				"responses": responses(obj{"200": jsonResp("the target (without secrets)", ref("Target")), "404": errResp("no such target")})},
			"delete": obj{"summary": "Stop requiring CHAP",
				"responses": responses(obj{"204": obj{"description": "CHAP removed"}, "404": errResp("no such target")})},
		},
		"/api/v1/targets/{iqn}/initiators/{initiator}/chap": obj{
			"parameters": []any{iqnParamD, pathParam("initiator", "initiator IQN", str)},
			"put": obj{"summary": "Give one initiator CHAP credentials of its own on the target (used instead of the target-wide ones); its sessions under other credentials are dropped", "requestBody": jsonBody(ref("CHAPRequest")),
				"responses": responses(obj{"200": jsonResp("the target (without secrets)", ref("Target")), "404": errResp("no such target")})},
			"delete": obj{"summary": "Remove an initiator's own credentials (it falls back to the target-wide ones)",
				"responses": responses(obj{"204": obj{"description": "removed"}, "404": errResp("no such target, or no credentials for that initiator")})},
		},
		"/api/v1/discovery/chap": obj{
			"get": obj{"summary": "Whether discovery sessions need CHAP (no secrets)",
				"responses": responses(obj{"200": jsonResp("discovery CHAP", ref("CHAPStatus"))})},
			"put": obj{"summary": "Require CHAP (optionally mutual) for discovery sessions; secrets are write-only", "requestBody": jsonBody(ref("CHAPRequest")),
				"responses": responses(obj{"200": jsonResp("discovery CHAP (without secrets)", ref("CHAPStatus"))})},
			"delete": obj{"summary": "Let discovery sessions log in without CHAP",
				"responses": responses(obj{"204": obj{"description": "discovery CHAP removed"}})},
		},
		"/api/v1/subsystems": obj{
			"get": obj{"summary": "List NVMe subsystems",
				"responses": responses(obj{"200": jsonResp("subsystems sorted by NQN", obj{"type": "array", "items": ref("Subsystem")})})},
			"post": obj{"summary": "Create an NVMe subsystem", "requestBody": jsonBody(ref("CreateSubsystem")),
				"responses": responses(obj{"201": jsonResp("created", ref("Subsystem")), "409": errResp("the subsystem exists")})},
		},
		"/api/v1/subsystems/{nqn}": obj{
			"parameters": []any{nqnParamD},
			"get": obj{"summary": "Get a subsystem",
				"responses": responses(obj{"200": jsonResp("the subsystem", ref("Subsystem")), "404": errResp("no such subsystem")})},
			"delete": obj{"summary": "Delete a subsystem (its controllers are torn down; its volumes are kept)",
				"responses": responses(obj{"204": obj{"description": "deleted"}, "404": errResp("no such subsystem")})},
		},
		"/api/v1/subsystems/{nqn}/namespaces": obj{
			"parameters": []any{nqnParamD},
			"post": obj{"summary": "Export a volume as a namespace, live (hosts get the Namespace Attribute Changed event)", "requestBody": jsonBody(ref("AddNamespace")),
				"responses": responses(obj{"201": jsonResp("the subsystem with the new namespace", ref("Subsystem")), "404": errResp("no such subsystem or volume"), "409": errResp("the NSID is taken or the volume is already a namespace of this subsystem")})},
		},
		"/api/v1/subsystems/{nqn}/namespaces/{nsid}": obj{
			"parameters": []any{nqnParamD, pathParam("nsid", "namespace ID", obj{"type": "integer", "minimum": 1, "maximum": 1024})},
			"delete": obj{"summary": "Remove a namespace, live",
				"responses": responses(obj{"204": obj{"description": "removed"}, "404": errResp("no such subsystem or namespace")})},
		},
		"/api/v1/subsystems/{nqn}/hosts": obj{
			"parameters": []any{nqnParamD},
			"put": obj{"summary": "Replace the host list: host NQNs, or allow_any_host; controllers of hosts no longer admitted are torn down", "requestBody": jsonBody(ref("Hosts")),
				"responses": responses(obj{"200": jsonResp("the subsystem", ref("Subsystem")), "404": errResp("no such subsystem")})},
		},
		"/api/v1/controllers": obj{
			"get": obj{"summary": "List NVMe controllers (I/O and discovery)",
				"responses": responses(obj{"200": jsonResp("controllers by ID", obj{"type": "array", "items": ref("Controller")})})},
		},
		"/api/v1/sessions": obj{
			"get": obj{"summary": "List iSCSI sessions", "parameters": []any{queryParam("target", "only sessions logged in to this target", str)},
				"responses": responses(obj{"200": jsonResp("sessions by TSIH", obj{"type": "array", "items": ref("Session")})})},
		},
		"/api/v1/sessions/{tsih}": obj{
			"parameters": []any{pathParam("tsih", "target session identifying handle", obj{"type": "integer", "minimum": 1, "maximum": 65535})},
			"delete": obj{"summary": "Force a session to log out (async logout request, then the connection is dropped)",
				"responses": responses(obj{"202": obj{"description": "logout requested"}, "404": errResp("no such session")})},
		},
		"/metrics": obj{
			"get": obj{"summary": "Prometheus metrics",
				"responses": obj{"200": obj{"description": "Prometheus text exposition", "content": obj{"text/plain": obj{"schema": str}}}, "401": errResp("missing or invalid bearer token")}},
		},
	},
	"components": obj{
		"securitySchemes": obj{"bearer": obj{"type": "http", "scheme": "bearer", "description": "the token in DIR/api.token or ANVIL_API_TOKEN"}},
		"schemas": obj{
			"Error": obj{"type": "object", "required": []any{"error"}, "properties": obj{"error": str, "field": str}},
			"Health": obj{"type": "object", "properties": obj{"status": str, "volumes": obj{"type": "integer"}, "targets": obj{"type": "integer"},
				"sessions": obj{"type": "integer"}, "uptime_seconds": obj{"type": "integer"}}},
			"CreateVolume": obj{"type": "object", "additionalProperties": false, "required": []any{"name", "size_bytes"}, "properties": obj{
				"name":        obj{"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
				"size_bytes":  obj{"type": "integer", "format": "int64", "minimum": 512, "maximum": int64(1) << 46},
				"block_size":  obj{"type": "integer", "enum": []any{512, 4096}},
				"write_cache": boolean, "read_only": boolean,
				"backend": obj{"type": "string", "enum": []any{"file", "mmap", "block"}},
				"device":  obj{"type": "string", "description": "block device of a block volume (its size is the volume's)"}}},
			"Faults": obj{"type": "object", "additionalProperties": false, "required": []any{"rate"}, "properties": obj{
				"rate": obj{"type": "integer", "minimum": 0, "maximum": 10000}, "seed": int64s,
				"error": obj{"type": "string", "enum": []any{"eio", "enospc"}, "description": "eio (default): any I/O fails with EIO; enospc: writes fail with ENOSPC, as on a full file system"}}},
			"PatchVolume": obj{"type": "object", "additionalProperties": false, "minProperties": 1, "properties": obj{
				"size_bytes": int64s, "write_cache": boolean, "read_only": boolean}},
			"ImportPath": obj{"type": "object", "additionalProperties": false, "required": []any{"name", "path"}, "properties": obj{
				"name": str, "path": str, "block_size": obj{"type": "integer", "enum": []any{512, 4096}}, "write_cache": boolean, "read_only": boolean}},
			"OpStats": obj{"type": "object", "properties": obj{"ops": int64s, "bytes": int64s, "errors": int64s,
				"latency": obj{"type": "object", "description": "engine latency histogram: counts per log2 bucket (bucket i under 2^i µs, the last open) of the timed operations; one in sample_every operations is timed, so sum_seconds*sample_every estimates the time of all ops", "properties": obj{"counts": obj{"type": "array", "items": int64s}, "count": int64s, "sum_seconds": obj{"type": "number"}, "sample_every": int64s}}}},
			"Volume": obj{"type": "object", "properties": obj{
				"name": str, "size_bytes": int64s, "block_size": obj{"type": "integer"}, "thin": boolean,
				"backend": str, "path": str, "write_cache": boolean, "read_only": boolean, "serial": str, "naa": str, "error": str,
				"state": obj{"type": "string", "enum": []any{"online", "degraded", "offline"}}, "reason": str,
				"warnings":  obj{"type": "array", "items": str},
				"created":   obj{"type": "string", "format": "date-time"},
				"mapped_by": obj{"type": "array", "items": str},
				"stats": obj{"type": "object", "properties": obj{"read": ref("OpStats"), "write": ref("OpStats"), "flush": ref("OpStats"), "unmap": ref("OpStats"),
					"dirty_bytes": int64s,
					"engine": obj{"type": "object", "description": "counters of the caching engine, when the volume runs on it", "properties": obj{
						"epochs": int64s, "undo_bytes": int64s, "cache_hits": int64s, "cache_misses": int64s, "commit_errors": int64s,
						"injected_faults": int64s, "commit_count": int64s, "commit_seconds": obj{"type": "number"}}}}}}},
			"ACL": obj{"type": "object", "additionalProperties": false, "properties": obj{"open": boolean, "initiators": obj{"type": "array", "items": str}}},
			"CreateTarget": obj{"type": "object", "additionalProperties": false, "required": []any{"iqn"}, "properties": obj{
				"iqn": str, "alias": str, "acl": ref("ACL")}},
			"MapLUN": obj{"type": "object", "additionalProperties": false, "required": []any{"lun", "volume"}, "properties": obj{
				"lun": obj{"type": "integer", "minimum": 0, "maximum": 16383}, "volume": str}},
			"CHAPRequest": obj{"type": "object", "additionalProperties": false, "required": []any{"user", "secret"}, "properties": obj{
				"user": str, "secret": obj{"type": "string", "minLength": 12, "maxLength": 255, "writeOnly": true},
				"mutual_user": str, "mutual_secret": obj{"type": "string", "minLength": 12, "maxLength": 255, "writeOnly": true}}},
			"Target": obj{"type": "object", "properties": obj{
				"iqn": str, "alias": str,
				"luns": obj{"type": "array", "items": obj{"type": "object", "properties": obj{"lun": obj{"type": "integer"}, "volume": str}}},
				"acl":  ref("ACL"),
				"chap": ref("CHAPStatus"),
				"initiator_chap": obj{"type": "array", "items": obj{"type": "object", "properties": obj{
					"initiator": str, "enabled": boolean, "user": str, "mutual": boolean, "mutual_user": str}}},
				"created": obj{"type": "string", "format": "date-time"}}},
			"CHAPStatus": obj{"type": "object", "properties": obj{"enabled": boolean, "user": str, "mutual": boolean, "mutual_user": str}},
			"Hosts":      obj{"type": "object", "additionalProperties": false, "properties": obj{"allow_any_host": boolean, "hosts": obj{"type": "array", "items": str}}},
			"CreateSubsystem": obj{"type": "object", "additionalProperties": false, "required": []any{"nqn"}, "properties": obj{
				"nqn": obj{"type": "string", "maxLength": 223}, "serial": obj{"type": "string", "maxLength": 20},
				"allow_any_host": boolean, "hosts": obj{"type": "array", "items": str}}},
			"AddNamespace": obj{"type": "object", "additionalProperties": false, "required": []any{"volume"}, "properties": obj{
				"nsid": obj{"type": "integer", "minimum": 0, "maximum": 1024, "description": "0 or absent: the lowest free ID"}, "volume": str}},
			"Subsystem": obj{"type": "object", "properties": obj{
				"nqn": str, "serial": str, "allow_any_host": boolean, "hosts": obj{"type": "array", "items": str},
				"namespaces": obj{"type": "array", "items": obj{"type": "object", "properties": obj{
					"nsid": obj{"type": "integer"}, "volume": str, "nguid": str, "uuid": str}}},
				"created": obj{"type": "string", "format": "date-time"}}},
			"Controller": obj{"type": "object", "properties": obj{
				"id": obj{"type": "integer"}, "subsystem": str, "discovery": boolean, "host_nqn": str, "host_id": str,
				"local_addr": str, "queues": obj{"type": "integer"}, "keep_alive_ms": obj{"type": "integer"},
				"connected": obj{"type": "string", "format": "date-time"}}},
			"Session": obj{"type": "object", "properties": obj{
				"initiator_name": str, "initiator_alias": str, "isid": str, "tsih": obj{"type": "integer"},
				"target": str, "discovery": boolean, "remote_addr": str, "local_addr": str,
				"auth_method":    obj{"type": "string", "enum": []any{"None", "CHAP"}},
				"chap_algorithm": obj{"type": "string", "enum": []any{"MD5", "SHA-256", "SHA3-256"}}, "mutual_chap": boolean,
				"params":             obj{"type": "object", "description": "negotiated iSCSI operational parameters"},
				"commands_in_flight": obj{"type": "integer"},
				"established":        obj{"type": "string", "format": "date-time"}}},
		},
	},
}

func (s *server) openAPI(c echo.Context) error { return c.JSON(http.StatusOK, openAPIDoc) }
