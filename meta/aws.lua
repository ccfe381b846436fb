---@meta aws
-- aws: S3, CloudFront, Secrets Manager, ECR, and SigV4 for the rest (modules/aws/README.md).
-- Verbs raise `{ kind = "aws", message, code, status, request_id, operation, bucket, key, ... }`.

---What every call starts from (`aws.configure`); any call takes the same keys in its opts.
---@class tug.aws.Settings
---@field region? string else AWS_REGION, AWS_DEFAULT_REGION, the profile's region
---@field endpoint_url? string|table<string, string> one URL, or `{ s3 = URL, ... }` per service
---@field profile? string else AWS_PROFILE, else "default"
---@field credentials? tug.aws.Credentials given directly
---@field path_style? boolean https://host/bucket/key S3 URLs
---@field retries? integer on connection failures, timeouts and 5xx (default 2)
---@field timeout? tug.Duration per request

---@class tug.aws.Credentials
---@field access_key_id string
---@field secret_access_key string
---@field session_token? string
---@field source? string where they came from

---@class tug.aws.PutOptions: tug.aws.Settings
---@field file? string upload this file instead of `body`
---@field content_type? string
---@field cache_control? string
---@field content_encoding? string
---@field content_disposition? string
---@field content_language? string
---@field metadata? table<string, string>
---@field acl? string
---@field storage_class? string

---@class tug.aws.ObjectInfo
---@field etag string
---@field size integer
---@field content_type string?
---@field cache_control string?
---@field content_encoding string?
---@field last_modified string?
---@field version_id string?
---@field metadata table<string, string>

---@class tug.aws.ListedObject
---@field key string
---@field size integer
---@field etag string
---@field last_modified string
---@field storage_class string?

---@class tug.aws.SyncOptions: tug.aws.Settings
---@field concurrency? integer small files at a time (default 16)
---@field content_types? table<string, string> `{ ext = type }` added or overriding
---@field cache_control? string|fun(path: string): string?|{ [1]: string, [2]: string }[] a value, a function, or { glob, value } pairs
---@field exclude? string[] glob patterns relative to dir
---@field delete? boolean remove the objects that dir no longer has

---@class tug.aws.SyncResult
---@field uploaded integer
---@field skipped integer
---@field deleted integer
---@field bytes integer
---@field uploads string[]
---@field deletes string[]
---@field planned boolean?

---@class tug.aws.SignOptions
---@field method? string
---@field url string
---@field headers? table<string, string>
---@field body? string
---@field query? table
---@field service string
---@field region? string
---@field time? number|string seconds since the epoch or "20130524T000000Z"
---@field credentials? tug.aws.Credentials
---@field payload_hash? string e.g. "UNSIGNED-PAYLOAD"
---@field presign? integer seconds: the signature goes into the URL
---@field profile? string

---@class tug.aws.Signed
---@field url string with the canonical query string
---@field headers table<string, string>
---@field authorization string
---@field signature string
---@field signed_headers string
---@field canonical_request string
---@field string_to_sign string

---@class tug.aws.RequestOptions: tug.aws.Settings
---@field service string
---@field method? string
---@field path? string appended to the service's endpoint
---@field url? string
---@field query? table
---@field headers? table<string, string>
---@field body? string
---@field read_only? boolean under `tug plan`, send it even though its method writes

---@class tug.aws
aws = {}

---Sets what every later call starts from (other keys, such as a bucket name, are ignored).
---@param opts tug.aws.Settings
function aws.configure(opts) end

---Signs a request without sending it.
---@param opts tug.aws.SignOptions
---@return tug.aws.Signed
function aws.sign(opts) end

---A signed call to any AWS API; failures come back as values, as with http.request.
---@param opts tug.aws.RequestOptions
---@return tug.http.Response
function aws.request(opts) end

---The credentials the usual chain resolves to.
---@param opts? tug.aws.Settings
---@return tug.aws.Credentials
function aws.credentials(opts) end

---Registers the `${secret:aws:NAME}` provider with the environment loader (done on load).
---@return boolean
function aws.register_secret_provider() end

---Objects named `s3://bucket/key`.
---@class tug.aws.s3
aws.s3 = {}

---Files over this many bytes go up in parts.
---@type integer
aws.s3.MULTIPART_THRESHOLD = 0

---The size of one part of a multipart upload.
---@type integer
aws.s3.PART_SIZE = 0

---Parts of one file uploaded at a time.
---@type integer
aws.s3.PART_CONCURRENCY = 0

---Uploads `body` (or `opts.file`): `{ bucket, key, etag, size [, multipart, parts] }`.
---@param url string
---@param body string?
---@param opts? tug.aws.PutOptions
---@return { bucket: string, key: string, etag: string, size: integer, multipart: boolean?, parts: integer? }
function aws.s3.put(url, body, opts) end

---The object's body and info; with `opts.file` the body streams to that file (body is nil).
---@param url string
---@param opts? tug.aws.Settings|{ file?: string, range?: string }
---@return string? body
---@return tug.aws.ObjectInfo info
function aws.s3.get(url, opts) end

---The object's info, or nil when there is no such object.
---@param url string
---@param opts? tug.aws.Settings
---@return tug.aws.ObjectInfo?
function aws.s3.head(url, opts) end

---Every page of ListObjectsV2 under the prefix; `delimiter = "/"` fills prefixes.
---@param url string "s3://bucket/prefix"
---@param opts? tug.aws.Settings|{ delimiter?: string, page_size?: integer, limit?: integer }
---@return tug.aws.ListedObject[] objects
---@return string[] prefixes
function aws.s3.list(url, opts) end

---true (also when the object did not exist).
---@param url string
---@param opts? tug.aws.Settings
---@return true
function aws.s3.delete(url, opts) end

---Deletes `keys` in the bucket (1000 a request); the count.
---@param url string "s3://bucket"
---@param keys string[]
---@param opts? tug.aws.Settings
---@return integer
function aws.s3.delete_many(url, keys, opts) end

---A URL that works without credentials until it expires (at most 7 days).
---@param url string
---@param opts? tug.aws.Settings|{ method?: string, expires?: tug.Duration, time?: number|string, headers?: table<string, string> }
---@return string
function aws.s3.presign(url, opts) end

---Uploads the files of `dir` whose bytes differ from the objects under the prefix.
---@param dir string
---@param url string "s3://bucket/prefix"
---@param opts? tug.aws.SyncOptions
---@return tug.aws.SyncResult
function aws.s3.sync(dir, url, opts) end

---@class tug.aws.cloudfront
aws.cloudfront = {}

---`{ id, status, location }`; `paths` is a list (or one string) of paths starting with `/`.
---@param distribution string
---@param paths string|string[]
---@param opts? tug.aws.Settings|{ caller_reference?: string }
---@return { id: string, status: string, location: string }
function aws.cloudfront.create_invalidation(distribution, paths, opts) end

---@param distribution string
---@param id string
---@param opts? tug.aws.Settings
---@return { id: string, status: string, create_time: string }
function aws.cloudfront.get_invalidation(distribution, id, opts) end

---The invalidation once Completed; an `aws` error with code "WaitTimeout" when time runs out.
---@param distribution string
---@param id string|table an id or what create_invalidation returned
---@param opts? tug.aws.Settings|{ timeout?: tug.Duration, interval?: tug.Duration }
---@return { id: string, status: string, create_time: string }
function aws.cloudfront.wait_invalidation(distribution, id, opts) end

---@class tug.aws.secretsmanager
aws.secretsmanager = {}

---The SecretString (or decoded SecretBinary); `json = true` decodes it, `field` picks one field.
---@param name string
---@param opts? tug.aws.Settings|{ json?: boolean, field?: string, version_id?: string, version_stage?: string }
---@return any value
---@return { arn: string, name: string, version_id: string, binary: boolean } info
function aws.secretsmanager.get_secret(name, opts) end

---Stores a new value (a table is stored as JSON).
---@param name string
---@param value string|table
---@param opts? tug.aws.Settings
---@return { arn: string, name: string, version_id: string }
function aws.secretsmanager.put_secret(name, value, opts) end

---@class tug.aws.ecr
aws.ecr = {}

---The severities of scan findings, in order.
---@type string[]
aws.ecr.SEVERITIES = {}

---Every page: `{ repository, digest, tags, size, pushed_at, scan_status, severity_counts, raw }` each.
---@param repository string
---@param opts? tug.aws.Settings|{ tags?: string[], registry_id?: string }
---@return table[]
function aws.ecr.describe_images(repository, opts) end

---true or false (a missing repository raises).
---@param repository string
---@param tag string
---@param opts? tug.aws.Settings
---@return boolean
function aws.ecr.image_exists(repository, tag, opts) end

---`{ status, counts, total, completed_at, description, digest }`; `wait` polls while the scan runs.
---@param repository string
---@param tag string
---@param opts? tug.aws.Settings|{ wait?: tug.Duration, interval?: tug.Duration, registry_id?: string }
---@return { status: string, counts: table<string, integer>, total: integer, completed_at: string?, description: string?, digest: string }
function aws.ecr.scan_findings(repository, tag, opts) end

return aws
